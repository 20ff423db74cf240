//! The `hive` command line, run as a user would, and the bulk apply behind it.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{agent_yaml, cli_with, wait_for, Hive, IMAGE};

#[tokio::test]
async fn apply_get_wait_describe_and_delete_from_the_command_line() {
    let hive = Hive::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.yaml");
    let talker = format!(
        "apiVersion: hive/v1\nkind: Agent\nmetadata: {{name: talker, labels: {{team: research}}}}\nspec:\n  image: {IMAGE}\n  command: [/bin/sh, -c, \"echo hello-from-talker; echo second-line; exec sleep 3600\"]\n"
    );
    std::fs::write(
        &file,
        format!("{talker}---\n{}", agent_yaml("quiet", "  state: Stopped\n")),
    )
    .unwrap();
    let f = file.to_str().unwrap();

    let (ok, out, err) = hive.cli(&["apply", "-f", f]);
    assert!(ok, "{err}");
    assert_eq!(out, "agent/talker created\nagent/quiet created\n");
    let (ok, out, _) = hive.cli(&["apply", "-f", f]);
    assert!(ok);
    assert_eq!(out, "agent/talker unchanged\nagent/quiet unchanged\n");

    let (ok, out, err) = hive.cli(&[
        "wait",
        "talker",
        "--for",
        "phase=Running",
        "--timeout",
        "60s",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "agent/talker phase=Running\n");
    let (ok, _, err) = hive.cli(&["wait", "quiet", "--for", "phase=Running", "--timeout", "1s"]);
    assert!(!ok);
    assert!(
        err.starts_with("hive: timed out after 1s") && err.contains("last seen: phase Stopped"),
        "{err}"
    );

    // get: a table, one row, selectors, JSON and YAML.
    let (ok, out, _) = hive.cli(&["get"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("PHASE") && lines[0].ends_with("AGE"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("quiet ") && lines[1].contains("Stopped"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("talker ") && lines[2].contains("Running") && lines[2].contains(IMAGE),
        "{out}"
    );
    let (_, out, _) = hive.cli(&["get", "-l", "team=research", "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, out, _) = hive.cli(&["get", "talker", "-o", "yaml"]);
    let one: Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(one["metadata"]["name"], "talker");
    let (_, out, _) = hive.cli(&["get", "-o", "wide"]);
    assert!(out.lines().next().unwrap().contains("OWNER"));
    let (ok, _, err) = hive.cli(&["get", "nobody"]);
    assert!(!ok);
    assert_eq!(err, "hive: agent \"nobody\" not found\n");

    let (ok, out, _) = hive.cli(&["describe", "talker"]);
    assert!(ok);
    assert!(
        out.contains("Name:         talker")
            && out.contains("Phase:      Running")
            && out.contains("image: "),
        "{out}"
    );

    // logs: everything, and the tail.
    let out = wait_for("the agent's output", || async {
        let (ok, out, _) = hive.cli(&["logs", "talker"]);
        (ok && out.contains("second-line")).then_some(out)
    })
    .await;
    assert_eq!(out, "hello-from-talker\nsecond-line\n");
    let (_, out, _) = hive.cli(&["logs", "talker", "--tail", "1"]);
    assert_eq!(out, "second-line\n");
    let (ok, out, _) = hive.cli(&["logs", "talker", "--since", "10m"]);
    assert!(ok && out.contains("hello-from-talker"));
    // An agent declared Stopped has never run: no container, so no logs, and it says so.
    hive.wait_phase("quiet", "Stopped").await;
    let (ok, _, err) = hive.cli(&["logs", "quiet"]);
    assert!(
        !ok && err.contains("is stopped and has no container"),
        "{err}"
    );

    // A dry run shows the diff and changes nothing; the real run configures.
    let changed = talker.replace("team: research", "team: ops");
    std::fs::write(&file, &changed).unwrap();
    let (ok, out, _) = hive.cli(&["apply", "-f", f, "--dry-run"]);
    assert!(ok);
    assert!(
        out.starts_with("agent/talker configured (dry run)\n"),
        "{out}"
    );
    assert!(
        out.contains("    -     team: research\n    +     team: ops\n"),
        "{out}"
    );
    assert_eq!(
        hive.get("talker").await.unwrap()["metadata"]["labels"]["team"],
        "research"
    );
    let (_, out, _) = hive.cli(&["apply", "-f", f]);
    assert_eq!(out, "agent/talker configured\n");

    // stop, start, restart.
    let (ok, out, _) = hive.cli(&["stop", "talker"]);
    assert!(ok);
    assert_eq!(out, "agent/talker stop requested\n");
    hive.wait_phase("talker", "Stopped").await;
    let (_, out, _) = hive.cli(&["start", "talker"]);
    assert_eq!(out, "agent/talker start requested\n");
    hive.wait_phase("talker", "Running").await;
    let (ok, out, _) = hive.cli(&["restart", "talker"]);
    assert!(ok);
    assert_eq!(out, "agent/talker restart requested\n");

    // delete by file, and wait until gone.
    std::fs::write(
        &file,
        format!("{talker}---\n{}", agent_yaml("quiet", "  state: Stopped\n")),
    )
    .unwrap();
    let (ok, out, err) = hive.cli(&["delete", "-f", f, "--wait"]);
    assert!(ok, "{err}");
    assert_eq!(out, "agent/talker deleted\nagent/quiet deleted\n");
    assert_eq!(hive.list().await["items"], json!([]));
    assert!(hive.containers().await.is_empty());
}

#[tokio::test]
async fn command_line_errors_are_one_clear_line() {
    let hive = Hive::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        format!(
            "{}---\n{}",
            agent_yaml("fine", ""),
            agent_yaml("broken", "").replace(&format!("  image: {IMAGE}\n"), "")
        ),
    )
    .unwrap();
    let (ok, out, err) = hive.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.is_empty());
    assert!(
        err.contains("1 of 2 documents cannot be applied; nothing was applied"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml (document 2): spec.image: is required"),
        "{err}"
    );
    assert_eq!(hive.list().await["items"], json!([]), "nothing was applied");

    let (ok, _, err) = cli_with("http://127.0.0.1:1", "k", &["get"]);
    assert!(!ok);
    assert!(
        err.starts_with("hive: cannot reach Hive at http://127.0.0.1:1: connection refused"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    let (ok, _, err) = cli_with(&hive.url, "wrong", &["get"]);
    assert!(!ok);
    assert!(err.contains("refused the API key (401"), "{err}");
    let (ok, _, err) = hive.cli(&["apply", "-f", "/nonexistent.yaml"]);
    assert!(!ok);
    assert_eq!(err, "hive: /nonexistent.yaml does not exist\n");
    let (ok, out, _) = cli_with(&hive.url, "no-key-needed", &["health"]);
    assert!(ok);
    assert_eq!(out, "ok\n");
    let (ok, _, err) = cli_with("http://127.0.0.1:1", "k", &["health"]);
    assert!(!ok && err.contains("does not answer"), "{err}");
    let (ok, _, err) = hive.cli(&["wait", "x", "--for", "ready"]);
    assert!(!ok);
    assert!(
        err.contains("--for \"ready\" is not understood; use phase=<"),
        "{err}"
    );
}

#[tokio::test]
async fn bulk_apply_checks_every_document_before_writing_any() {
    let hive = Hive::start().await;
    let post = |path: &str, body: String| {
        hive.req(Method::POST, path)
            .header("content-type", "application/yaml")
            .body(body)
            .send()
    };
    let good = agent_yaml("b1", "  state: Stopped\n");
    let bad_image = agent_yaml("b2", "").replace(&format!("  image: {IMAGE}\n"), "");
    let bad_field = agent_yaml("b3", "  colour: blue\n");
    let r = post(
        "/v1/apply",
        format!("{good}---\n{bad_image}---\n{bad_field}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_documents");
    let docs = e["error"]["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(
        (
            docs[0]["index"].clone(),
            docs[0]["name"].clone(),
            docs[0]["field"].clone()
        ),
        (json!(1), json!("b2"), json!("spec.image"))
    );
    assert_eq!(
        (docs[1]["index"].clone(), docs[1]["field"].clone()),
        (json!(2), json!("spec.colour"))
    );
    assert_eq!(hive.list().await["items"], json!([]));

    let twice = post("/v1/apply", format!("{good}---\n{good}"))
        .await
        .unwrap();
    assert_eq!(twice.status(), 422, "a name twice in one apply");

    let two = format!("{good}---\n{}", agent_yaml("b4", "  state: Stopped\n"));
    let r: Value = post("/v1/apply?dryRun=true", two.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["dryRun"], true);
    assert_eq!(r["items"][0]["result"], "created");
    assert!(r["items"][0]["diff"].as_str().unwrap().contains("+ spec:"));
    assert_eq!(
        hive.list().await["items"],
        json!([]),
        "a dry run writes nothing"
    );

    let r: Value = post("/v1/apply", two.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let results: Vec<_> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["result"].clone())
        .collect();
    assert_eq!(results, vec![json!("created"), json!("created")]);
    let r: Value = post("/v1/apply", two).await.unwrap().json().await.unwrap();
    assert_eq!(r["items"][1]["result"], "unchanged");
    hive.wait_phase("b4", "Stopped").await;

    // JSON arrays are accepted too.
    let arr = json!([{"apiVersion": "hive/v1", "kind": "Agent", "metadata": {"name": "b5"}, "spec": {"image": IMAGE, "state": "Stopped"}}]);
    let r = hive
        .req(Method::POST, "/v1/apply")
        .json(&arr)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn apply_prune_syncs_a_directory_once_with_the_same_safety() {
    let hive = Hive::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dir_arg = d.to_str().unwrap();
    std::fs::write(d.join("p1.yaml"), agent_yaml("p1", "  state: Stopped\n")).unwrap();
    std::fs::write(d.join("p2.yaml"), agent_yaml("p2", "  state: Stopped\n")).unwrap();
    assert_eq!(
        hive.put_yaml("by-api", &agent_yaml("by-api", "  state: Stopped\n"))
            .await
            .status(),
        201
    );

    let (ok, out, err) = hive.cli(&["apply", "-f", dir_arg, "--prune"]);
    assert!(ok, "{err}");
    assert_eq!(out, "agent/p1 created\nagent/p2 created\n");
    assert_eq!(
        hive.get("p1").await.unwrap()["metadata"]["annotations"]["hive-apply/source"],
        "p1.yaml"
    );

    std::fs::remove_file(d.join("p2.yaml")).unwrap();
    let (ok, out, _) = hive.cli(&["apply", "-f", dir_arg, "--prune", "--dry-run"]);
    assert!(ok);
    assert_eq!(
        out,
        "agent/p1 unchanged (dry run)\nagent/p2 pruned (dry run)\n"
    );
    assert!(hive.get("p2").await.unwrap()["metadata"]
        .get("deletionTimestamp")
        .is_none());

    // A broken file: nothing applied, nothing pruned.
    std::fs::write(d.join("p3.yaml"), "metadata: [").unwrap();
    let (ok, out, err) = hive.cli(&["apply", "-f", dir_arg, "--prune"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("p3.yaml"), "{err}");
    assert!(hive.get("p2").await.unwrap()["metadata"]
        .get("deletionTimestamp")
        .is_none());
    std::fs::remove_file(d.join("p3.yaml")).unwrap();

    let (ok, out, _) = hive.cli(&["apply", "-f", dir_arg, "--prune"]);
    assert!(ok);
    assert_eq!(out, "agent/p1 unchanged\nagent/p2 pruned\n");
    wait_for("p2 to go", || async {
        hive.get("p2").await.is_none().then_some(())
    })
    .await;
    assert!(
        hive.get("by-api").await.is_some(),
        "agents made through the API are never pruned"
    );

    // An empty directory prunes nothing.
    std::fs::remove_file(d.join("p1.yaml")).unwrap();
    let (ok, _, err) = hive.cli(&["apply", "-f", dir_arg, "--prune"]);
    assert!(!ok);
    assert!(err.contains("holds no manifests"), "{err}");
    assert!(hive.get("p1").await.is_some());
}

#[tokio::test]
async fn secrets_are_set_from_env_files_and_literals_and_never_shown() {
    let hive = Hive::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("llm.env");
    std::fs::write(
        &file,
        "# provider keys\nOPENAI_API_KEY=sk-from-file\n\nMODEL=gpt=4o\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();

    let (ok, out, err) = hive.cli(&[
        "secret",
        "set",
        "llm-keys",
        "--from-env-file",
        f,
        "--from-literal",
        "EXTRA=sk-literal",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "secret/llm-keys set: EXTRA,MODEL,OPENAI_API_KEY\n");
    // The agent that reads it gets the values, exactly.
    hive.running("reader", "  envFrom: [{secretRef: llm-keys}]\n")
        .await;
    let env = hive.container_env("reader").await;
    for expected in [
        "OPENAI_API_KEY=sk-from-file",
        "MODEL=gpt=4o",
        "EXTRA=sk-literal",
    ] {
        assert!(env.iter().any(|e| e == expected), "{expected} in {env:?}");
    }

    let (ok, out, _) = hive.cli(&["secret", "get"]);
    assert!(ok);
    assert!(out.starts_with("NAME") && out.contains("llm-keys"), "{out}");
    assert!(
        out.contains("EXTRA,MODEL,OPENAI_API_KEY") && !out.contains("sk-"),
        "{out}"
    );

    // Bad input names the line and changes nothing.
    std::fs::write(&file, "OPENAI_API_KEY=changed\nnot a pair\n").unwrap();
    let (ok, _, err) = hive.cli(&["secret", "set", "llm-keys", "--from-env-file", f]);
    assert!(!ok);
    assert!(err.contains("llm.env, line 2: expected KEY=VALUE"), "{err}");
    let shown = hive.get_json("/v1/secrets/llm-keys").await;
    assert_eq!(shown["keys"], json!(["EXTRA", "MODEL", "OPENAI_API_KEY"]));
    let (ok, _, err) = hive.cli(&["secret", "set", "empty"]);
    assert!(!ok && err.contains("--from-literal KEY=VALUE"), "{err}");

    let (ok, out, err) = hive.cli(&["secret", "delete", "llm-keys"]);
    assert!(ok, "{err}");
    assert_eq!(out, "secret/llm-keys deleted\n");
    let (ok, _, err) = hive.cli(&["secret", "get", "llm-keys"]);
    assert!(!ok && err.contains("404"), "{err}");
}

/// Runs `hive mcp` against `url` with `key`, feeding it `lines`; returns its stdout lines
/// as JSON and its stderr.
fn mcp_bridge(url: &str, key: &str, lines: &[Value]) -> (Vec<Value>, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["mcp", "--server", url])
        .env("AGENT_API_KEY", key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    writeln!(stdin, "not json").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let answers = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON-RPC"))
        .collect();
    (answers, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn hive_mcp_bridges_stdio_to_the_servers_mcp_endpoint() {
    let hive = Hive::start().await;
    let manifest = agent_yaml("bridged", "  state: Stopped\n");
    let lines = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "apply_agents", "arguments": {"manifest": manifest}}}),
    ];
    let (answers, stderr) = mcp_bridge(&hive.url, &hive.key, &lines);
    let by_id = |id: i64| {
        answers
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("no answer {id} in {answers:?} ({stderr})"))
    };
    assert_eq!(by_id(1)["result"]["serverInfo"]["name"], "hive");
    assert_eq!(by_id(2)["result"]["tools"].as_array().unwrap().len(), 14);
    assert_eq!(by_id(3)["result"]["isError"], false, "{}", by_id(3));
    assert_eq!(
        hive.get("bridged").await.unwrap()["spec"]["state"],
        "Stopped"
    );
    // The line that is not JSON gets a parse error; nothing else is printed.
    assert!(answers.iter().any(|a| a["error"]["code"] == -32700));
    assert_eq!(answers.len(), 4, "{answers:?}");

    // A refused key: each request gets an error saying so, none hangs.
    let (answers, stderr) = mcp_bridge(&hive.url, "wrong", &lines[..3]);
    let refused: Vec<_> = answers
        .iter()
        .filter(|a| a["error"]["code"] == -32000)
        .collect();
    assert_eq!(refused.len(), 2, "{answers:?}");
    assert!(
        refused[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused the API key (401"),
        "{refused:?}"
    );
    assert!(stderr.contains("refused the API key"), "{stderr}");
}

#[test]
fn completion_scripts_load_and_complete_subcommands() {
    let script = |shell: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        String::from_utf8(out.stdout).unwrap()
    };
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        assert!(script(shell).contains("port-forward"), "{shell}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hive.bash");
    std::fs::write(&path, script("bash")).unwrap();
    // Loaded into bash, it completes `hive ex` to `exec` and `hive port-` to `port-forward`.
    let probe = format!(
        "source {}; complete -p hive; COMP_WORDS=(hive ex); COMP_CWORD=1; _hive hive ex hive; echo \"[${{COMPREPLY[*]}}]\"; COMP_WORDS=(hive port-); _hive hive port- hive; echo \"[${{COMPREPLY[*]}}]\"",
        path.display()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &probe])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("complete -o bashdefault -o default -o nosort -F _hive hive"),
        "{text}"
    );
    assert!(text.contains("[exec]"), "{text}");
    assert!(text.contains("[port-forward]"), "{text}");
}
