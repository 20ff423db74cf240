//! The admission policy's rules, one table or scenario each.

use super::*;
use crate::agent::SpecDuration;
use serde_json::Value;

fn agent(spec: Value) -> Agent {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "hive/v1", "kind": "Agent",
        "metadata": {"name": "a", "owner": "sol"}, "spec": spec
    }))
    .unwrap()
}

fn policy(yaml: &str) -> Policy {
    Policy::from_yaml(yaml).unwrap()
}

fn admit(p: &Policy, a: &mut Agent, others: &[&Agent]) -> Result<(), Refusal> {
    p.admit(a, others, &BTreeMap::new())
}

fn rule(r: Result<(), Refusal>) -> String {
    match r.unwrap_err() {
        Refusal::Invalid { rule, .. } | Refusal::Quota { rule, .. } => rule,
    }
}

#[test]
fn images_outside_the_allowlist_are_refused() {
    let p = policy("images: {allow: [\"nanobot:*\"]}");
    assert_eq!(
        rule(admit(
            &p,
            &mut agent(serde_json::json!({"image": "nanobot:5000/evil:1"})),
            &[]
        )),
        "images.allow",
        "a star does not cross into a registry"
    );
    assert!(admit(
        &p,
        &mut agent(serde_json::json!({"image": "nanobot:1"})),
        &[]
    )
    .is_ok());
    assert!(
        admit(&p, &mut agent(serde_json::json!({"image": "nanobot"})), &[]).is_ok(),
        "implied :latest"
    );
    assert_eq!(
        rule(admit(
            &p,
            &mut agent(serde_json::json!({"image": "alpine:3"})),
            &[]
        )),
        "images.allow"
    );
}

#[test]
fn defaults_fill_in_and_maxima_hold() {
    let p = policy("defaults: {memory: 256Mi, cpus: 0.5, pids: 100}\nmax: {memory: 1Gi, cpus: 1}");
    let mut a = agent(serde_json::json!({"image": "x"}));
    admit(&p, &mut a, &[]).unwrap();
    assert_eq!(a.spec.resources.memory.as_deref(), Some("256Mi"));
    assert_eq!(a.spec.resources.cpus.as_deref(), Some("0.5"));
    assert_eq!(a.spec.resources.pids, Some(100));
    let mut big = agent(serde_json::json!({"image": "x", "resources": {"memory": "2Gi"}}));
    assert_eq!(rule(admit(&p, &mut big, &[])), "max.memory");
    let mut fast = agent(serde_json::json!({"image": "x", "resources": {"cpus": 2}}));
    assert_eq!(rule(admit(&p, &mut fast, &[])), "max.cpus");
}

#[test]
fn the_compose_deployments_policy_loads_and_bounds_sol() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deployment/policy.yaml");
    let p = Policy::load(&path).unwrap();
    let mut a = agent(serde_json::json!({"image": "nanobot:latest"}));
    admit(&p, &mut a, &[]).unwrap();
    assert_eq!(
        a.spec
            .lifecycle
            .idle_timeout
            .as_ref()
            .map(SpecDuration::as_str),
        Some("30m")
    );
    let mut rogue = agent(serde_json::json!({"image": "alpine:3"}));
    assert_eq!(rule(admit(&p, &mut rogue, &[])), "owners.sol.images.allow");
    assert_eq!(p.gitops.owner, "gitops");
    assert!(p.has_quota("sol"));
}

#[test]
fn an_owner_s_images_and_quota_replace_the_general_ones_for_its_agents() {
    let p = policy(
        "images: {allow: [\"*\"]}\nquota: {agents: 100}\nowners:\n  sol:\n    images: {allow: [\"nanobot:*\"]}\n    quota: {agents: 1}\n",
    );
    let mut a = agent(serde_json::json!({"image": "nanobot:1"}));
    admit(&p, &mut a, &[]).unwrap();
    let mut evil = agent(serde_json::json!({"image": "evil:1"}));
    let refused = admit(&p, &mut evil, &[]).unwrap_err();
    assert_eq!(rule(Err(refused.clone())), "owners.sol.images.allow");
    assert!(
        refused
            .to_string()
            .contains("policy rule owners.sol.images.allow"),
        "{refused}"
    );
    let other = agent(serde_json::json!({"image": "nanobot:1"}));
    let mut second = agent(serde_json::json!({"image": "nanobot:1"}));
    assert_eq!(
        rule(admit(&p, &mut second, &[&other])),
        "owners.sol.quota.agents"
    );
    // Another owner has the general rules.
    let mut bobs = agent(serde_json::json!({"image": "evil:1"}));
    bobs.metadata.owner = Some("bob".into());
    admit(&p, &mut bobs, &[&other]).unwrap();
    assert!(p.has_quota("bob") && p.has_quota("sol"));
    for bad in [
        "owners: {Sol: {}}",
        "owners: {sol: {images: {allow: [\"a b\"]}}}",
        "owners: {sol: {quota: {memory: lots}}}",
        "owners: {sol: {wrong: 1}}",
    ] {
        assert!(Policy::from_yaml(bad).is_err(), "{bad}");
    }
}

#[test]
fn lifecycle_defaults_and_maxima_are_per_owner_where_given() {
    let p = policy(
        "lifecycle:\n  defaults: {idleTimeout: 30m, ttlAfterFinished: 1h}\n  max: {idleTimeout: 8h}\n  owners:\n    sol: {defaults: {idleTimeout: 15m}, max: {idleTimeout: 1h}}\n",
    );
    let mut a = agent(serde_json::json!({"image": "x"}));
    admit(&p, &mut a, &[]).unwrap();
    assert_eq!(
        a.spec
            .lifecycle
            .idle_timeout
            .as_ref()
            .map(SpecDuration::as_str),
        Some("15m"),
        "sol's own"
    );
    assert_eq!(
        a.spec
            .lifecycle
            .ttl_after_finished
            .as_ref()
            .map(SpecDuration::as_str),
        Some("1h"),
        "the general one"
    );
    let mut long = agent(serde_json::json!({"image": "x", "lifecycle": {"idleTimeout": "2h"}}));
    assert_eq!(
        rule(admit(&p, &mut long, &[])),
        "lifecycle.owners.sol.max.idleTimeout"
    );
    let mut bob = agent(serde_json::json!({"image": "x", "lifecycle": {"idleTimeout": "2h"}}));
    bob.metadata.owner = Some("bob".into());
    admit(&p, &mut bob, &[]).unwrap();
    let mut bob = agent(serde_json::json!({"image": "x", "lifecycle": {"idleTimeout": "9h"}}));
    bob.metadata.owner = Some("bob".into());
    assert_eq!(rule(admit(&p, &mut bob, &[])), "lifecycle.max.idleTimeout");
    assert!(
        Policy::from_yaml("lifecycle: {defaults: {idleTimeout: soon}}")
            .unwrap_err()
            .contains("lifecycle.defaults.idleTimeout")
    );
}

#[test]
fn capabilities_come_only_from_the_allowlist() {
    let p = policy("capabilities: {allow: [NET_BIND_SERVICE]}");
    let mut ok = agent(serde_json::json!({"image": "x", "capabilities": ["cap_net_bind_service"]}));
    admit(&p, &mut ok, &[]).unwrap();
    assert_eq!(
        ok.spec.capabilities,
        Some(vec!["NET_BIND_SERVICE".to_string()])
    );
    let mut bad = agent(serde_json::json!({"image": "x", "capabilities": ["SYS_ADMIN"]}));
    assert_eq!(rule(admit(&p, &mut bad, &[])), "capabilities.allow");
    assert_eq!(
        rule(admit(
            &Policy::default(),
            &mut agent(serde_json::json!({"image": "x", "capabilities": ["NET_RAW"]})),
            &[]
        )),
        "capabilities.allow"
    );
}

#[test]
fn quotas_count_the_owners_other_agents() {
    let p = policy("quota: {agents: 2, memory: 1Gi}");
    let one = agent(serde_json::json!({"image": "x", "resources": {"memory": "512Mi"}}));
    let mut two = one.clone();
    admit(&p, &mut two, &[&one]).unwrap();
    let mut three = one.clone();
    assert_eq!(rule(admit(&p, &mut three, &[&one, &two])), "quota.agents");
    let mut fat = agent(serde_json::json!({"image": "x", "resources": {"memory": "768Mi"}}));
    assert_eq!(rule(admit(&p, &mut fat, &[&one])), "quota.memory");
}

#[test]
fn env_is_bounded() {
    let p = policy("env: {maxCount: 2, maxBytes: 10}");
    let mut many = agent(serde_json::json!({"image": "x", "env": {"A": "1", "B": "2", "C": "3"}}));
    assert_eq!(rule(admit(&p, &mut many, &[])), "env.maxCount");
    let mut big = agent(serde_json::json!({"image": "x", "env": {"A": "0123456789"}}));
    assert_eq!(rule(admit(&p, &mut big, &[])), "env.maxBytes");
}

#[test]
fn a_partial_policy_keeps_the_builtin_limits_and_ceilings() {
    let p = policy("defaults: {pids: 64}\nmax: {memory: 256Mi}");
    let mut a = agent(serde_json::json!({"image": "x"}));
    admit(&p, &mut a, &[]).unwrap();
    let r = &a.spec.resources;
    // The built-in default memory (512Mi) is above this policy's maximum: capped.
    assert_eq!(r.memory.as_deref(), Some("256Mi"));
    assert_eq!(r.cpus.as_deref(), Some("1"));
    assert_eq!(r.pids, Some(64));
    let mut many = agent(serde_json::json!({"image": "x", "resources": {"pids": 4_000_000}}));
    assert_eq!(rule(admit(&p, &mut many, &[])), "max.pids");
    let mut fast = agent(serde_json::json!({"image": "x", "resources": {"cpus": 64}}));
    assert_eq!(rule(admit(&p, &mut fast, &[])), "max.cpus");
}

#[test]
fn quotas_count_effective_values() {
    let p = policy("quota: {memory: 1Gi}\ndefaults: {memory: 512Mi}");
    // Stored without limits (an older record): counts as the default, not as nothing.
    let old = agent(serde_json::json!({"image": "x"}));
    let mut second = agent(serde_json::json!({"image": "x"}));
    admit(&p, &mut second, &[&old]).unwrap();
    let mut third = agent(serde_json::json!({"image": "x"}));
    assert_eq!(
        rule(admit(&p, &mut third, &[&old, &second])),
        "quota.memory"
    );
}

#[test]
fn private_registries_are_refused_unless_listed() {
    let mut a = agent(serde_json::json!({"image": "127.0.0.1:5999/x"}));
    assert_eq!(
        rule(admit(&Policy::default(), &mut a, &[])),
        "images.privateRegistries"
    );
    let p = policy("images: {privateRegistries: [\"127.0.0.1:5999\"]}");
    admit(&p, &mut a, &[]).unwrap();
}

#[test]
fn env_from_counts_against_the_env_limits() {
    let p = policy("env: {maxCount: 3}");
    let secrets: BTreeMap<String, String> =
        (0..3).map(|i| (format!("S{i}"), "v".to_string())).collect();
    let mut a = agent(serde_json::json!({"image": "x", "env": {"A": "1"}}));
    match p.admit(&mut a, &[], &secrets).unwrap_err() {
        Refusal::Invalid { rule, invalid } => {
            assert_eq!(
                (rule.as_str(), invalid.field.as_str()),
                ("env.maxCount", "spec.envFrom")
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn forbidden_requests_are_named() {
    for (doc, field) in [
        (
            serde_json::json!({"spec": {"privileged": true}}),
            "spec.privileged",
        ),
        (
            serde_json::json!({"spec": {"hostNetwork": true}}),
            "spec.hostNetwork",
        ),
        (
            serde_json::json!({"spec": {"volumes": [{"hostPath": "/"}]}}),
            "spec.volumes[0].hostPath",
        ),
        (
            serde_json::json!({"spec": {"env": {"X": "/var/run/docker.sock"}}}),
            "spec.env.X",
        ),
    ] {
        assert_eq!(screen(&doc).unwrap_err().field, field);
    }
    // Variable names that look like forbidden fields are fine.
    assert!(screen(&serde_json::json!({"spec": {"env": {"USER": "me", "DEVICES": "0"}}})).is_ok());
    let mount = serde_json::json!({"spec": {"command": ["x", "-v", "/var/run/docker.sock:/s"]}});
    assert_eq!(screen(&mount).unwrap_err().field, "spec.command[2]");
    assert!(screen(&serde_json::json!({"spec": {"image": "x"}})).is_ok());
}

#[test]
fn a_bad_policy_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, "max: {memory: lots}").unwrap();
    assert!(Policy::load(&path)
        .unwrap_err()
        .to_string()
        .contains("max.memory"));
    std::fs::write(&path, "capabilities: {allow: [FLY]}").unwrap();
    assert!(Policy::load(&path).is_err());
}

#[test]
fn exec_is_allowed_unless_the_policy_or_the_owners_rule_says_no() {
    assert_eq!(Policy::default().may_exec("sol"), Ok(()));
    let p = policy("exec: {allow: false}\nowners:\n  ops: {exec: {allow: true}}\n  sol: {}\n");
    assert_eq!(p.may_exec("bob"), Err("exec.allow".to_string()));
    assert_eq!(p.may_exec("sol"), Err("exec.allow".to_string()));
    assert_eq!(p.may_exec("ops"), Ok(()));
    let p = policy("owners:\n  sol: {exec: {allow: false}}\n");
    assert_eq!(p.may_exec("sol"), Err("owners.sol.exec.allow".to_string()));
    assert_eq!(p.may_exec("bob"), Ok(()));
    assert!(Policy::from_yaml("exec: {allow: maybe}").is_err());
    assert!(Policy::from_yaml("exec: {deny: true}").is_err());
}
