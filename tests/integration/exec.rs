//! Exec: commands run once in a running agent through Hive (no engine socket needed), on
//! the real engine: output, exit codes, input, environment, caps and time-outs; who may
//! (owners, roles, the policy); the audit entry; and `hive exec` passing the status on.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{agent_yaml, new_key, put_as, with_key, write_keys, Hive};

async fn exec(hive: &Hive, key: &str, name: &str, body: Value) -> (u16, Value) {
    let r = with_key(hive, key, Method::POST, &format!("/v1/agents/{name}/exec"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn a_command_runs_in_a_running_agent_and_answers_its_output_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    let (sol, sol_entry) = new_key("sol", "operator", "sol-1");
    let (bob, bob_entry) = new_key("bob", "operator", "bob-1");
    let (view, view_entry) = new_key("sol", "viewer", "sol-view");
    write_keys(&keys, &[&sol_entry, &bob_entry, &view_entry]);
    let hive = Hive::start_args(&["--keys-file".into(), keys.display().to_string()]).await;
    assert_eq!(
        put_as(&hive, &sol, "box", &agent_yaml("box", ""))
            .await
            .status(),
        201
    );
    hive.wait_phase("box", "Running").await;

    // Output on both streams, and the exit code.
    let (status, r) = exec(
        &hive,
        &sol,
        "box",
        json!({"command": ["sh", "-c", "echo out; echo err >&2; exit 3"]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r,
        json!({"exitCode": 3, "stdout": "out\n", "stderr": "err\n", "truncated": false, "timedOut": false})
    );
    // Input, closed after it is given; the environment and the working directory.
    let (_, r) = exec(
        &hive,
        &sol,
        "box",
        json!({"command": ["cat"], "stdin": "secret-input-123"}),
    )
    .await;
    assert_eq!(
        (r["exitCode"].clone(), r["stdout"].clone()),
        (json!(0), json!("secret-input-123"))
    );
    let (_, r) = exec(
        &hive,
        &sol,
        "box",
        json!({"command": ["sh", "-c", "echo $GREETING; pwd"], "env": {"GREETING": "hi"}, "workingDir": "/bin"}),
    )
    .await;
    assert_eq!(r["stdout"], "hi\n/bin\n", "{r}");
    // Output past 1 MiB is read and dropped, and said so.
    let (_, r) = exec(
        &hive,
        &sol,
        "box",
        json!({"command": ["sh", "-c", "i=0; while [ $i -lt 24000 ]; do echo 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789; i=$((i+1)); done"]}),
    )
    .await;
    assert_eq!(r["stdout"].as_str().unwrap().len(), 1024 * 1024);
    assert_eq!(
        (r["truncated"].clone(), r["exitCode"].clone()),
        (json!(true), json!(0))
    );
    // A time-out answers what came so far, without waiting for the command.
    let start = Instant::now();
    let (status, r) = exec(
        &hive,
        &sol,
        "box",
        json!({"command": ["sh", "-c", "echo started; sleep 5"], "timeout": "1s"}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert!(start.elapsed().as_secs_f64() < 4.5, "{:?}", start.elapsed());
    assert_eq!(
        (
            r["timedOut"].clone(),
            r["exitCode"].clone(),
            r["stdout"].clone()
        ),
        (json!(true), Value::Null, json!("started\n"))
    );
    // A program that is not there is the engine's non-zero exit, not a Hive error.
    let (status, r) = exec(&hive, &sol, "box", json!({"command": ["no-such-program"]})).await;
    assert_eq!(status, 200, "{r}");
    assert_ne!(r["exitCode"], 0, "{r}");

    // Bad requests are refused naming the field, before anything runs.
    for (body, field) in [
        (json!({"command": []}), "command"),
        (json!({"command": ["true"], "timeout": "2h"}), "timeout"),
        (
            json!({"command": ["true"], "workingDir": "relative"}),
            "workingDir",
        ),
    ] {
        let (status, e) = exec(&hive, &sol, "box", body.clone()).await;
        assert_eq!(status, 422, "{body}: {e}");
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    // No user, privilege or anything else beyond the documented fields.
    let (status, e) = exec(
        &hive,
        &sol,
        "box",
        json!({"command": ["id"], "user": "root"}),
    )
    .await;
    assert!(status == 400 || status == 422, "{status} {e}");
    let (status, e) = exec(
        &hive,
        &sol,
        "box",
        json!({"command": ["id"], "privileged": true}),
    )
    .await;
    assert!(status == 400 || status == 422, "{status} {e}");

    // Who may: another owner does not see it, a viewer may not, an admin may.
    let (status, _) = exec(&hive, &bob, "box", json!({"command": ["true"]})).await;
    assert_eq!(status, 404);
    let (status, e) = exec(&hive, &view, "box", json!({"command": ["true"]})).await;
    assert_eq!(status, 403, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("viewer"),
        "{e}"
    );
    let (status, r) = exec(
        &hive,
        &hive.key,
        "box",
        json!({"command": ["echo", "admin"]}),
    )
    .await;
    assert_eq!((status, r["stdout"].clone()), (200, json!("admin\n")));

    // `hive exec` prints the output and leaves with the command's status; -i sends stdin.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hive"))
        .args([
            "exec",
            "-i",
            "box",
            "--",
            "sh",
            "-c",
            "cat; echo to-stderr >&2; exit 5",
        ])
        .env("AGENT_API_URL", &hive.url)
        .env("AGENT_API_KEY", &sol)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    let (ok, _, err) = hive.cli(&["exec", "box", "--timeout", "1s", "--", "sleep", "3"]);
    assert!(!ok && err.contains("time-out"), "{err}");

    // Every exec is audited with its command and exit code, never its input or output.
    let audit = hive.get_json("/v1/audit?limit=500").await;
    let execs: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["verb"] == "exec")
        .collect();
    assert!(
        execs.iter().any(|e| e["keyId"] == "sol-1"
            && e["agent"] == "box"
            && e["outcome"] == "accepted"
            && e["detail"].as_str().unwrap().contains("exit code 3")),
        "{execs:#?}"
    );
    assert!(execs
        .iter()
        .any(|e| e["keyId"] == "sol-view" && e["status"] == 403));
    let text = audit.to_string();
    assert!(
        !text.contains("secret-input-123") && !text.contains("to-stderr\\n"),
        "{text}"
    );

    // A stopped agent has nothing to run in.
    let r = with_key(&hive, &sol, Method::POST, "/v1/agents/box/action")
        .json(&json!({"action": "stop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    hive.wait_phase("box", "Stopped").await;
    let (status, e) = exec(&hive, &sol, "box", json!({"command": ["true"]})).await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (409, json!("not_running")),
        "{e}"
    );
}

#[tokio::test]
async fn the_policy_can_deny_exec_to_an_owners_operators() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "owners:\n  sol: {exec: {allow: false}}\n").unwrap();
    let (sol, sol_entry) = new_key("sol", "operator", "sol-1");
    let (bob, bob_entry) = new_key("bob", "operator", "bob-1");
    write_keys(&keys, &[&sol_entry, &bob_entry]);
    let hive = Hive::start_args(&[
        "--keys-file".into(),
        keys.display().to_string(),
        "--policy".into(),
        policy.display().to_string(),
    ])
    .await;
    assert_eq!(
        put_as(&hive, &sol, "sols", &agent_yaml("sols", ""))
            .await
            .status(),
        201
    );
    assert_eq!(
        put_as(&hive, &bob, "bobs", &agent_yaml("bobs", ""))
            .await
            .status(),
        201
    );
    hive.wait_phase("sols", "Running").await;
    hive.wait_phase("bobs", "Running").await;

    let (status, e) = exec(&hive, &sol, "sols", json!({"command": ["true"]})).await;
    assert_eq!(status, 403, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("owners.sol.exec.allow"),
        "{e}"
    );
    let (status, r) = exec(&hive, &bob, "bobs", json!({"command": ["echo", "bob"]})).await;
    assert_eq!((status, r["stdout"].clone()), (200, json!("bob\n")));
    // The rule binds operators; an admin still may (it is how an operator is helped).
    let (status, r) = exec(
        &hive,
        &hive.key,
        "sols",
        json!({"command": ["echo", "admin"]}),
    )
    .await;
    assert_eq!((status, r["stdout"].clone()), (200, json!("admin\n")));
}
