//! Hive's integration tests, in one binary so it links once: the real `hive` binary,
//! a real sled store on disk, the real HTTP server and the real Docker engine.
//! Each test runs its own Hive under its own `--instance`, so tests run in parallel on
//! one engine without seeing each other's containers.

mod harness;
mod proxy;

mod api;
mod cli;
mod contract;
mod drift;
mod exec;
mod faults;
mod gitops;
mod guarantees;
mod leases;
mod lifecycle;
mod messages;
mod observe;
mod redteam;
mod restart;
mod router;
mod security;
mod workloads;
