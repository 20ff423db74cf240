//! Hive: a declarative control plane for fleets of AI agents in containers.
//!
//! Clients (people, a git repo of manifests, and the agent Sol) declare `Agent`s over an
//! authenticated HTTP API; Hive stores that desired state in sled and a reconcile loop
//! makes the container engine match it. Hive is the only holder of the Docker socket, so
//! an agent that is talked into something can ask Hive for agents, never for the host.
//!
//! # Layout
//! - [`agent`]: the resource (metadata, spec, status), its validation and quantities.
//! - [`service`]: the one write path: admission, owners, policy, the store write, the flush,
//!   waking the controller, and the audit entry, for every adapter alike.
//! - Adapters over the service: [`api`] (HTTP, axum), [`gitops`] (a directory of manifests).
//! - [`store`]: desired state on disk (sled): agents, watch history, audit, events, secrets.
//! - [`controller`]: the runtime (queue, triggers, backoff by error kind) apart from
//!   `reconcile`, the pure `plan`, and `workload` (what an agent asks a backend to run).
//! - [`orchestrator`]: the workload-level backend trait; [`orchestrator::docker`] is the
//!   only user of bollard, [`orchestrator::kubernetes`] the only user of kube-rs.
//! - [`lease`]: leader election, so that one Hive at a time reconciles an instance.
//! - [`access`]: keys, owners and roles; [`policy`]: what an agent may be (admission);
//!   [`image`]: image references and patterns; [`resolve`]: where a registry's name
//!   leads, looked up before the engine dials it; [`selector`]: label selectors;
//!   [`document`]: strict JSON/YAML parsing, shared with the CLI; [`files`]: bounded
//!   reads of files others control (manifests, keys, policy), off the runtime.
//! - [`cli`]: the client commands of the `hive` binary (apply, get, describe, delete, ...).
//! - [`metrics`]: Prometheus metrics; [`serve`]: the HTTP server loop (connection cap,
//!   header timeout, graceful close); [`config`]: the flags of `hive serve`; [`shutdown`]:
//!   the Ctrl-C / SIGTERM signal; `testing` (feature): the in-memory backend for tests.
//!
//! [`App`] wires them together around a backend it is given; [`run`] serves it. `main`
//! only parses flags, makes the backend `--backend` names and calls [`run`].

#[cfg(feature = "server")]
pub mod access;
pub mod agent;
#[cfg(feature = "server")]
pub mod api;
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod controller;
pub mod document;
#[cfg(feature = "server")]
pub mod files;
#[cfg(feature = "server")]
pub mod gitops;
pub mod image;
#[cfg(test)]
mod layers;
#[cfg(feature = "server")]
pub mod lease;
pub mod manifests;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod orchestrator;
#[cfg(feature = "server")]
pub mod policy;
#[cfg(feature = "server")]
pub mod resolve;
#[cfg(feature = "server")]
pub mod selector;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod shutdown;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;

#[cfg(feature = "server")]
mod app;
#[cfg(feature = "server")]
pub use app::{backend, docker_backend, kubernetes_backend, run, App, Config, Error};
