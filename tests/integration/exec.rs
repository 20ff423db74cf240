//! Exec: commands run once in a running agent through Hive (no engine socket needed), on
//! the real engine: output, exit codes, input, environment, caps and time-outs; who may
//! (owners, roles, the policy); the audit entry; and `hive exec` passing the status on.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{agent_yaml, new_key, put_as, with_key, write_keys, Hive};

/// A Hive with keys for two operators (owners sol and bob) and sol's viewer.
struct Keyed {
    hive: Hive,
    sol: String,
    bob: String,
    view: String,
}

async fn keyed(dir: &std::path::Path) -> Keyed {
    let keys = dir.join("keys.yaml");
    let (sol, sol_entry) = new_key("sol", "operator", "sol-1");
    let (bob, bob_entry) = new_key("bob", "operator", "bob-1");
    let (view, view_entry) = new_key("sol", "viewer", "sol-view");
    write_keys(&keys, &[&sol_entry, &bob_entry, &view_entry]);
    let hive = Hive::start_args(&["--keys-file".into(), keys.display().to_string()]).await;
    Keyed {
        hive,
        sol,
        bob,
        view,
    }
}

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
    let Keyed {
        hive,
        sol,
        bob,
        view,
    } = keyed(dir.path()).await;
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
    // Much output before the input is read: input and output flow together, no deadlock.
    let (_, r) = exec(
        &hive,
        &sol,
        "box",
        json!({"command": ["sh", "-c", "i=0; while [ $i -lt 5000 ]; do echo 0123456789012345678901234567890123456789012345678901234567890123456789012345678; i=$((i+1)); done; cat >/dev/null; echo done"],
               "stdin": "y".repeat(400 * 1024), "timeout": "30s"}),
    )
    .await;
    assert_eq!(
        (r["timedOut"].clone(), r["exitCode"].clone()),
        (json!(false), json!(0)),
        "{}",
        r["stderr"]
    );
    assert!(r["stdout"].as_str().unwrap().ends_with("done\n"));
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

/// A tar of (path, contents or None for a directory, type), names set raw as a hostile
/// client would.
fn tar_of(entries: &[(&str, Option<&str>, tar::EntryType)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, body, kind) in entries {
        let body = body.unwrap_or("").as_bytes();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(body.len() as u64);
        h.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if *kind == tar::EntryType::Symlink {
            h.set_link_name("/etc").unwrap();
        }
        h.set_cksum();
        tar.append(&h, body).unwrap();
    }
    tar.into_inner().unwrap()
}

fn tar_entries(bytes: &[u8]) -> Vec<(String, String)> {
    use std::io::Read;
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            (path, body)
        })
        .collect()
}

#[tokio::test]
async fn files_move_both_ways_and_a_tar_cannot_reach_outside_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let Keyed {
        hive,
        sol,
        bob,
        view,
    } = keyed(dir.path()).await;
    let yaml = agent_yaml("files", "  volumes:\n  - {name: data, mountPath: /data}\n");
    assert_eq!(put_as(&hive, &sol, "files", &yaml).await.status(), 201);
    hive.wait_phase("files", "Running").await;
    let files = |key: &str, method: Method, path: &str| {
        with_key(&hive, key, method, "/v1/agents/files/files").query(&[("path", path)])
    };

    // One file, written raw and read back; the agent sees it.
    let r = files(&sol, Method::PUT, "/data/greeting.txt")
        .body("hello\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let r = files(&sol, Method::GET, "/data/greeting.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.text().await.unwrap(), "hello\n");
    let (_, out) = exec(
        &hive,
        &sol,
        "files",
        json!({"command": ["cat", "/data/greeting.txt"]}),
    )
    .await;
    assert_eq!(out["stdout"], "hello\n");

    // A tar unpacks under the directory; a directory reads back as a tar.
    let tree = tar_of(&[
        ("sub/", None, tar::EntryType::Directory),
        ("sub/a.txt", Some("alpha"), tar::EntryType::Regular),
    ]);
    let r = files(&sol, Method::PUT, "/data")
        .header("content-type", "application/x-tar")
        .body(tree)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let r = files(&sol, Method::GET, "/data/sub").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-tar");
    let entries = tar_entries(&r.bytes().await.unwrap());
    assert!(
        entries.contains(&("sub/a.txt".into(), "alpha".into())),
        "{entries:?}"
    );

    // What may not: links, `..`, absolute names in a tar; paths that climb or are relative;
    // a path that is not there; more than 16 MiB. Nothing of them is written.
    for (bad, what) in [
        (
            tar_of(&[("../escaped.txt", Some("x"), tar::EntryType::Regular)]),
            "tar entry 0",
        ),
        (
            tar_of(&[
                ("ok.txt", Some("x"), tar::EntryType::Regular),
                ("/abs.txt", Some("x"), tar::EntryType::Regular),
            ]),
            "tar entry 1",
        ),
        (tar_of(&[("link", None, tar::EntryType::Symlink)]), "links"),
    ] {
        let r = files(&sol, Method::PUT, "/data")
            .header("content-type", "application/x-tar")
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        assert!(
            e["error"]["message"].as_str().unwrap().contains(what),
            "{e}"
        );
    }
    let (_, out) = exec(
        &hive,
        &sol,
        "files",
        json!({"command": ["sh", "-c", "for f in /escaped.txt /data/escaped.txt /data/ok.txt /abs.txt /data/abs.txt /data/link; do if [ -e $f ] || [ -L $f ]; then echo $f; fi; done; echo /data/*"]}),
    )
    .await;
    assert_eq!(out["stdout"], "/data/greeting.txt /data/sub\n", "{out}");
    for path in ["data/x", "/data/../etc/passwd"] {
        let r = files(&sol, Method::PUT, path)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
    }
    let r = files(&sol, Method::GET, "/data/absent")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = files(&sol, Method::PUT, "/data/big")
        .body(vec![b'x'; 16 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Who may: as exec.
    assert_eq!(
        files(&bob, Method::GET, "/data/greeting.txt")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        files(&view, Method::GET, "/data/greeting.txt")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        files(&hive.key, Method::GET, "/data/greeting.txt")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // `hive cp` both ways, a file and a directory.
    let local = dir.path().join("notes");
    std::fs::create_dir(&local).unwrap();
    std::fs::write(local.join("n.txt"), "from the laptop").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hive"))
            .args(args)
            .env("AGENT_API_URL", &hive.url)
            .env("AGENT_API_KEY", &sol)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["cp", local.to_str().unwrap(), "files:/data"]);
    let back = dir.path().join("back");
    run(&["cp", "files:/data/notes", back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(back.join("notes/n.txt")).unwrap(),
        "from the laptop"
    );
    let one = dir.path().join("one.txt");
    run(&["cp", "files:/data/sub/a.txt", one.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&one).unwrap(), "alpha");

    // MCP's file tools, over the same service.
    let tool = |name: &'static str, arguments: Value| {
        let hive = &hive;
        let sol = sol.clone();
        async move {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                              "params": {"name": name, "arguments": arguments}});
            let r = with_key(hive, &sol, Method::POST, "/mcp")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-06-18")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{name}");
            let answer: Value = r.json().await.unwrap();
            answer["result"].clone()
        }
    };
    let written = tool(
        "write_agent_file",
        json!({"name": "files", "path": "/data/via-mcp.txt", "content": "tool text"}),
    )
    .await;
    assert_eq!(written["isError"], false, "{written}");
    let read = tool(
        "read_agent_file",
        json!({"name": "files", "path": "/data/via-mcp.txt", "maxBytes": 4}),
    )
    .await;
    assert_eq!(read["content"][0]["text"], "tool", "{read}");
    let dir = tool("read_agent_file", json!({"name": "files", "path": "/data"})).await;
    assert_eq!(dir["isError"], true, "{dir}");

    // Audited with path and size, never contents.
    let audit = hive.get_json("/v1/audit?limit=500").await.to_string();
    assert!(
        audit.contains("files.write") && audit.contains("path /data/greeting.txt, 6 B in"),
        "{audit}"
    );
    assert!(
        !audit.contains("from the laptop") && !audit.contains("alpha"),
        "{audit}"
    );
}

#[tokio::test]
async fn a_port_of_an_agent_is_reached_through_hive_with_hive_port_forward() {
    let dir = tempfile::tempdir().unwrap();
    let Keyed {
        hive,
        sol,
        bob,
        view,
    } = keyed(dir.path()).await;
    // An agent serving its own root over HTTP on port 8080.
    let yaml = agent_yaml("web", "").replace(
        "[\"/bin/sleep\", \"3600\"]",
        "[\"/bin/httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/\"]",
    );
    assert!(yaml.contains("httpd"), "{yaml}");
    assert_eq!(put_as(&hive, &sol, "web", &yaml).await.status(), 201);
    hive.wait_phase("web", "Running").await;
    let hostname = exec(
        &hive,
        &sol,
        "web",
        json!({"command": ["cat", "/etc/hostname"]}),
    )
    .await
    .1["stdout"]
        .as_str()
        .unwrap()
        .to_string();

    // Without the upgrade, and for those who may not: the API's own answers.
    let plain = |key: &str, port: &str| {
        with_key(
            &hive,
            key,
            Method::GET,
            &format!("/v1/agents/web/portforward?port={port}"),
        )
        .send()
    };
    assert_eq!(plain(&sol, "8080").await.unwrap().status(), 400);
    let upgrade = |key: &str, port: &str| {
        with_key(
            &hive,
            key,
            Method::GET,
            &format!("/v1/agents/web/portforward?port={port}"),
        )
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
    };
    assert_eq!(upgrade(&bob, "8080").await.unwrap().status(), 404);
    assert_eq!(upgrade(&view, "8080").await.unwrap().status(), 403);
    let closed = upgrade(&sol, "8081").await.unwrap();
    assert_eq!(closed.status(), 409);
    let e: Value = closed.json().await.unwrap();
    assert_eq!(e["error"]["code"], "port_closed", "{e}");
    assert_eq!(upgrade(&sol, "8080").await.unwrap().status(), 101);

    // `hive port-forward` on a free local port; an HTTP request through it reaches the agent.
    let mut forward = tokio::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["port-forward", "web", "0:8080"])
        .env("AGENT_API_URL", &hive.url)
        .env("AGENT_API_KEY", &sol)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(forward.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line),
    )
    .await
    .expect("hive port-forward says where it listens")
    .unwrap();
    let local = line
        .strip_prefix("Forwarding from ")
        .and_then(|l| l.split(" -> ").next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    for _ in 0..2 {
        let body = reqwest::get(format!("http://{local}/etc/hostname"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, hostname);
    }
    forward.kill().await.unwrap();

    // Each connection is audited with its port and bytes, once it ends.
    let audited = crate::harness::wait_for("the forwarded connections' audit entries", || async {
        let audit = hive.get_json("/v1/audit?limit=500").await;
        let n = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["verb"] == "portforward"
                    && e["keyId"] == "sol-1"
                    && e["status"] == 101
                    && e["detail"].as_str().unwrap().starts_with("port 8080, ")
            })
            .count();
        (n >= 3).then_some(n)
    })
    .await;
    assert!(audited >= 3);
}
