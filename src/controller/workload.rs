//! The translation of an agent's record into the [`Workload`] a backend runs: its secrets
//! resolved into the environment (`spec.env` winning on a clash), its quantities parsed,
//! and whether it should run or restart.

use crate::agent::Phase;
use crate::agent::{parse_cpus, parse_memory, DesiredState, Invalid};
use crate::orchestrator::{Intent, Workload};
use crate::policy::{Policy, Refusal};
use crate::store::{MissingSecret, Record, Store};

/// What `record` (as in effect: one stopped for idleness is stopped) asks of its
/// workload: stopped; restarted, when a restart asked for is not done yet; started, when
/// Hive last saw it stopped as declared; else kept running.
pub fn intent(record: &Record) -> Intent {
    let internal = &record.internal;
    if record.agent.spec.state != DesiredState::Running {
        Intent::Stop
    } else if internal.restarts_requested > internal.restarts_done {
        Intent::Restart
    } else if record.agent.status.phase == Phase::Stopped {
        Intent::Start
    } else {
        Intent::Run
    }
}

/// What `record` asks to run. A missing secret, or an environment the policy's limits no
/// longer allow (a secret grew), is an error naming the field.
pub fn workload(record: &Record, store: &Store, policy: &Policy) -> Result<Workload, Invalid> {
    let agent = &record.agent;
    let spec = &agent.spec;
    let mut env = store.env_from(agent, MissingSecret::Refuse)?;
    let from_secrets = !env.is_empty() || spec.env_from.as_ref().is_some_and(|e| !e.is_empty());
    env.extend(spec.env.0.iter().map(|(k, v)| (k.clone(), v.clone())));
    if from_secrets {
        policy
            .admit_env(&env, true)
            .map_err(|refusal| match refusal {
                Refusal::Invalid { invalid, .. } => invalid,
                Refusal::Quota { message, .. } => Invalid::new("spec.envFrom", message),
            })?;
    }
    let r = &spec.resources;
    Ok(Workload {
        agent: agent.metadata.name.clone(),
        uid: agent.metadata.uid.unwrap_or_default(),
        owner: agent.metadata.owner.clone().unwrap_or_default(),
        store: store.id().to_string(),
        image: spec.image.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: crate::agent::Env(env),
        restart_policy: spec.restart_policy,
        memory_bytes: r
            .memory
            .as_deref()
            .map(parse_memory)
            .transpose()
            .map_err(|m| Invalid::new("spec.resources.memory", m))?,
        cpu_nanos: r
            .cpus
            .as_deref()
            .map(parse_cpus)
            .transpose()
            .map_err(|m| Invalid::new("spec.resources.cpus", m))?,
        pids: r.pids,
        capabilities: spec.capabilities.clone().unwrap_or_default(),
        volumes: spec.volumes.clone().unwrap_or_default(),
        intent: intent(record),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_and_the_spec_env_wins_over_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .put_secret(
                crate::store::Secret {
                    name: "keys".into(),
                    owner: "sol".into(),
                    data: [
                        ("A".to_string(), "secret".to_string()),
                        ("B".to_string(), "b".to_string()),
                    ]
                    .into(),
                    resource_version: String::new(),
                    creation_timestamp: None,
                },
                None,
            )
            .unwrap();
        let agent: crate::agent::Agent = serde_yaml::from_str(
            "apiVersion: hive/v1\nkind: Agent\nmetadata: {name: a, owner: sol}\nspec: {image: x, env: {A: mine}, envFrom: [{secretRef: keys}], resources: {memory: 512Mi, cpus: \"0.5\"}}\n",
        )
        .unwrap();
        let record = store.create(agent).unwrap();
        let w = workload(&record, &store, &Policy::default()).unwrap();
        assert_eq!(w.memory_bytes, Some(512 * 1024 * 1024));
        assert_eq!(w.cpu_nanos, Some(500_000_000));
        assert_eq!(
            (w.env.0["A"].as_str(), w.env.0["B"].as_str()),
            ("mine", "b")
        );
        assert_eq!(w.intent, Intent::Run);
        assert_eq!(w.store, store.id());
    }
}
