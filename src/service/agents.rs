//! Agents through the service: admission (owners, roles, reserved names, `hive/`
//! annotations, the policy and quotas), each mutation, and the reads that a caller's key
//! may see.

use std::sync::Arc;

use crate::access::{Principal, Role};
use crate::agent::{shown_key, validate_name, Agent, DesiredState, Invalid, SOURCE_ANNOTATION};
use crate::selector::Selector;
use crate::store::{Applied, Entry, Event, MissingSecret, Record, StoreError};

use super::{require_write, Service, ServiceError};

/// An agent admitted for a write: as it will be stored, the record it replaces, and,
/// when an admin takes another owner's agent over, that owner.
pub(super) struct Admitted {
    pub agent: Agent,
    pub existing: Option<Record>,
    pub take_over: Option<String>,
}

/// One page of a list: the agents' entries (with their JSON), the resourceVersion they
/// were read at, and the `continue` token of the next page, if there is one.
#[derive(Debug)]
pub struct Page {
    pub version: u64,
    pub items: Vec<Arc<Entry>>,
    pub next: Option<String>,
}

/// A `continue` token: `<resourceVersion>.<last name of the page>`.
fn parse_continue(token: &str) -> Result<(u64, String), ServiceError> {
    let bad = || {
        ServiceError::Invalid(Invalid::new(
            "continue",
            "not a token this server gave; pass the `continue` of the previous page as it was",
        ))
    };
    let (version, name) = token.split_once('.').ok_or_else(bad)?;
    let version = version.parse::<u64>().map_err(|_| bad())?;
    validate_name(name).map_err(|_| bad())?;
    Ok((version, name.to_string()))
}

/// What a create-or-replace did.
#[derive(Clone, Debug)]
pub struct Put {
    pub agent: Agent,
    pub created: bool,
    /// The owner an admin took the agent over from, if it did.
    pub taken_over_from: Option<String>,
}

/// What `POST /v1/agents/{name}/action` (and its kin) may ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Declare it Running.
    Start,
    /// Declare it Stopped.
    Stop,
    /// Restart its workload once.
    Restart,
    /// A heartbeat: it is active (an agent stopped for idleness resumes).
    Touch,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Touch => "touch",
        }
    }
}

fn not_found(name: &str) -> ServiceError {
    ServiceError::NotFound(format!("agent {name:?} not found"))
}

impl Service {
    /// The record of an agent the caller may see; another owner's agent is not found.
    pub fn visible(&self, who: &Principal, name: &str) -> Result<Record, ServiceError> {
        validate_name(name).map_err(|m| {
            ServiceError::NotFound(format!("agent {:?} not found ({m})", shown_key(name)))
        })?;
        self.store
            .get(name)?
            .filter(|r| who.sees(r.agent.metadata.owner.as_deref().unwrap_or_default()))
            .ok_or_else(|| not_found(name))
    }

    /// An agent the caller may see, with its JSON, from memory.
    pub fn visible_entry(&self, who: &Principal, name: &str) -> Result<Arc<Entry>, ServiceError> {
        validate_name(name).map_err(|m| {
            ServiceError::NotFound(format!("agent {:?} not found ({m})", shown_key(name)))
        })?;
        self.store
            .snapshot()
            .agents
            .get(name)
            .filter(|e| who.sees(e.record.agent.metadata.owner.as_deref().unwrap_or_default()))
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// One page of the agents the caller may see that `selector` selects, sorted by name,
    /// all read at one resourceVersion: at most `limit` (all without one), after the page
    /// `token` ends (a `continue` from an earlier page, which reads that page's snapshot).
    pub fn list(
        &self,
        who: &Principal,
        selector: &Selector,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page, ServiceError> {
        let (snapshot, after) = match token {
            None => (self.store.snapshot(), None),
            Some(token) => {
                let (version, after) = parse_continue(token)?;
                let snapshot = self.store.kept_snapshot(version).ok_or_else(|| {
                    ServiceError::Gone(format!(
                        "the list this continue token pages through (resourceVersion {version}) is no longer kept; list again from the start"
                    ))
                })?;
                (snapshot, Some(after))
            }
        };
        let from = || match &after {
            Some(name) => std::ops::Bound::Excluded(name.clone()),
            None => std::ops::Bound::Unbounded,
        };
        // A selector with k=v terms reads only the agents the label index gives for them.
        let candidates = snapshot.candidates(selector.equalities());
        let in_order: Box<dyn Iterator<Item = &Arc<Entry>>> = match &candidates {
            Some(names) => Box::new(
                names
                    .range((from(), std::ops::Bound::Unbounded))
                    .filter_map(|n| snapshot.agents.get(n)),
            ),
            None => Box::new(
                snapshot
                    .agents
                    .range((from(), std::ops::Bound::Unbounded))
                    .map(|(_, e)| e),
            ),
        };
        let mut matching = in_order.filter(|e| {
            let a = &e.record.agent;
            who.sees(a.metadata.owner.as_deref().unwrap_or_default())
                && selector.matches(&a.metadata.labels)
        });
        let limit = limit.unwrap_or(usize::MAX);
        let items: Vec<Arc<Entry>> = matching.by_ref().take(limit).cloned().collect();
        // Another page only if something is left to show on it.
        let next = match (items.last(), matching.next()) {
            (Some(last), Some(_)) => {
                self.store.keep_snapshot(snapshot.clone());
                Some(format!(
                    "{}.{}",
                    snapshot.version, last.record.agent.metadata.name
                ))
            }
            _ => None,
        };
        Ok(Page {
            version: snapshot.version,
            items,
            next,
        })
    }

    /// What the reconciler did to an agent the caller may see, oldest first.
    pub fn events(&self, who: &Principal, name: &str) -> Result<Vec<Event>, ServiceError> {
        self.visible(who, name)?;
        Ok(self.store.events(name)?)
    }

    /// `POST /v1/agents`: a new agent; the name must be free.
    pub async fn create(&self, who: &Principal, agent: Agent) -> Result<Agent, ServiceError> {
        let name = agent.metadata.name.clone();
        let result = async {
            self.writable()?;
            require_write(who, "create agents")?;
            self.screen_registry(who, &agent).await?;
            let record = {
                let _admission = self.admission.lock().await;
                if self.store.get(&name)?.is_some() {
                    return Err(StoreError::AlreadyExists(name.clone()).into());
                }
                let (agent, _) = self.admit(who, agent, None, &[])?;
                self.store.create(agent)?
            };
            self.commit(&[&name]).await?;
            Ok(record.agent)
        }
        .await;
        self.audit(who, "create", &name, &result, 201);
        result
    }

    /// `PUT /v1/agents/{name}`: create or replace. A resourceVersion in the document is a
    /// precondition; an identical document changes nothing.
    pub async fn put(
        &self,
        who: &Principal,
        name: &str,
        mut agent: Agent,
    ) -> Result<Put, ServiceError> {
        let result = async {
            self.writable()?;
            require_write(who, "change agents")?;
            if agent.metadata.name.is_empty() {
                agent.metadata.name = name.to_string();
            } else if agent.metadata.name != name {
                return Err(ServiceError::invalid(
                    "metadata.name",
                    "differs from the name in the path",
                ));
            }
            self.screen_registry(who, &agent).await?;
            let (record, applied, take_over) = {
                let _admission = self.admission.lock().await;
                let admitted = self.prepare(who, agent, &[])?;
                let (record, applied) = self
                    .store
                    .apply(admitted.agent, admitted.take_over.as_deref())?;
                (record, applied, admitted.take_over)
            };
            if applied != Applied::Unchanged {
                self.commit(&[name]).await?;
            }
            if let Some(from) = &take_over {
                tracing::warn!(agent = %name, previous_owner = %from, "an admin took over another owner's agent");
            }
            Ok(Put {
                agent: record.agent,
                created: applied == Applied::Created,
                taken_over_from: take_over,
            })
        }
        .await;
        let status = match &result {
            Ok(p) if p.created => 201,
            _ => 200,
        };
        self.audit(who, "apply", name, &result, status);
        result
    }

    /// `DELETE /v1/agents/{name}`: marks it Terminating; the controller removes its
    /// workload, then the record.
    pub async fn delete(&self, who: &Principal, name: &str) -> Result<Agent, ServiceError> {
        let result = async {
            self.writable()?;
            self.visible(who, name)?;
            require_write(who, "delete agents")?;
            let record = self.store.mark_deleted(name)?;
            self.commit(&[name]).await?;
            Ok(record.agent)
        }
        .await;
        self.audit(who, "delete", name, &result, 202);
        result
    }

    /// Notes an agent stopped for idleness that `what` woke: an event, and the count.
    pub(super) fn resumed(&self, record: &Record, what: &str) {
        self.controller.resumed();
        let _ = self.store.record_event(
            &record.agent.metadata.name,
            crate::store::NewEvent {
                reason: crate::wire::Reason::Resumed,
                message: format!("woken from idleness by a {what}; starting it again"),
                generation: record.agent.metadata.generation,
            },
        );
    }

    /// Start, stop, restart or touch an agent.
    pub async fn act(
        &self,
        who: &Principal,
        name: &str,
        action: Action,
    ) -> Result<Agent, ServiceError> {
        let result = async {
            self.writable()?;
            let current = self.visible(who, name)?;
            require_write(who, &format!("{} agents", action.verb()))?;
            let (record, woke) = match action {
                Action::Start => self.store.set_state(name, DesiredState::Running)?,
                Action::Stop => self.store.set_state(name, DesiredState::Stopped)?,
                Action::Touch => self.store.touch(name)?,
                Action::Restart => {
                    if current.agent.spec.state == DesiredState::Stopped {
                        return Err(ServiceError::Conflict {
                            code: "stopped",
                            message: format!("agent {name:?} is stopped; start it instead"),
                        });
                    }
                    self.store.request_restart(name)?
                }
            };
            if woke {
                self.resumed(&record, action.verb());
            }
            self.commit(&[name]).await?;
            Ok(record.agent)
        }
        .await;
        self.audit(who, action.verb(), name, &result, 202);
        result
    }

    /// Checks one agent for a create-or-replace without writing it: the caller may touch
    /// that name, and the policy admits it. `pending` are agents admitted earlier in the
    /// same batch. The caller holds the admission lock until the write is done.
    pub(super) fn prepare(
        &self,
        who: &Principal,
        agent: Agent,
        pending: &[&Agent],
    ) -> Result<Admitted, ServiceError> {
        let name = agent.metadata.name.clone();
        let existing = self.store.get(&name)?;
        if let Some(e) = &existing {
            if !who.sees(e.agent.metadata.owner.as_deref().unwrap_or_default()) {
                // Names are global (they name workloads), so the name cannot be given twice.
                return Err(ServiceError::Conflict {
                    code: "already_exists",
                    message: format!("the name {name:?} is in use; choose another"),
                });
            }
        }
        let (agent, take_over) =
            self.admit(who, agent, existing.as_ref().map(|r| &r.agent), pending)?;
        Ok(Admitted {
            agent,
            existing,
            take_over,
        })
    }

    /// Sets the owner (the key's, or the one an admin names), refuses a write to another
    /// owner's agent unless an admin takes it over by naming its new owner, validates, and
    /// runs the admission policy against the owner's other agents.
    fn admit(
        &self,
        who: &Principal,
        mut agent: Agent,
        existing: Option<&Agent>,
        pending: &[&Agent],
    ) -> Result<(Agent, Option<String>), ServiceError> {
        let (owner, named) = match (&agent.metadata.owner, who.role) {
            (Some(o), Role::Admin) => (o.clone(), true),
            // The manifests directory names only the owners the policy lets it name, and
            // never takes an agent over.
            (Some(o), Role::System) if self.policy.gitops_may_name(o) => (o.clone(), false),
            (Some(_), Role::System) => {
                return Err(ServiceError::Refused {
                    rule: "gitops.allowOwners".into(),
                    invalid: Invalid::new(
                        "metadata.owner",
                        "names an owner the manifests directory may not declare agents for (policy rule gitops.allowOwners)",
                    ),
                })
            }
            (Some(o), _) if *o != who.owner => {
                return Err(ServiceError::Forbidden(
                    "only an admin key may set metadata.owner to another owner".into(),
                ))
            }
            _ => (who.owner.clone(), false),
        };
        if who.role != Role::System {
            // Annotations under hive/ are Hive's: a client setting hive/source would make
            // the manifests sync take its agent for one of the directory's.
            if let Some(k) = agent
                .metadata
                .annotations
                .keys()
                .find(|k| k.starts_with("hive/"))
            {
                return Err(ServiceError::invalid(
                    format!("metadata.annotations.{}", shown_key(k)),
                    "annotations under \"hive/\" are Hive's own and cannot be set",
                ));
            }
            if let Some(file) = existing.and_then(|e| e.metadata.annotations.get(SOURCE_ANNOTATION))
            {
                return Err(ServiceError::Conflict {
                    code: "managed_by_manifests",
                    message: format!(
                        "agent {:?} is declared by the manifests directory ({}); change it there",
                        agent.metadata.name,
                        shown_key(file)
                    ),
                });
            }
        }
        let mut take_over = None;
        if let Some(current) = existing.and_then(|e| e.metadata.owner.as_deref()) {
            if current != owner {
                if !named {
                    return Err(StoreError::OwnedBy {
                        kind: "agent",
                        name: agent.metadata.name.clone(),
                        owner: current.to_string(),
                    }
                    .into());
                }
                take_over = Some(current.to_string());
            }
        }
        agent.metadata.owner = Some(owner.clone());
        agent.validate()?;
        if self.reserved_names.contains(&agent.metadata.name) {
            return Err(ServiceError::Refused {
                rule: "reserved".into(),
                invalid: Invalid::new(
                    "metadata.name",
                    "is reserved for a service of the deployment (--reserved-names): an agent of \
                     that name would answer in its place on the agents' network (policy rule reserved)",
                ),
            });
        }
        // The owner's other agents count only against a quota; without one, skip the scan.
        // (Read in place from the snapshot: nothing is copied.)
        let snapshot = self.policy.has_quota(&owner).then(|| self.store.snapshot());
        // Agents admitted earlier in the same batch count as if stored already.
        let pending_names: std::collections::HashSet<&str> =
            pending.iter().map(|p| p.metadata.name.as_str()).collect();
        let others: Vec<&Agent> = snapshot
            .iter()
            .flat_map(|s| s.agents.values().map(|e| &e.record.agent))
            .filter(|a| !pending_names.contains(a.metadata.name.as_str()))
            .chain(pending.iter().copied())
            .filter(|a| a.metadata.owner.as_deref() == Some(owner.as_str()))
            .filter(|a| a.metadata.name != agent.metadata.name)
            .collect();
        // The secrets it takes its environment from count against the env limits too.
        let env_from = self.store.env_from(&agent, MissingSecret::Skip)?;
        self.policy.admit(&mut agent, &others, &env_from)?;
        Ok((agent, take_over))
    }
}
