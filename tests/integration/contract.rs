//! The backend contract: one scenario, through the real HTTP API, the real store and the
//! real controller, run against the Docker backend on the real engine and against the
//! Kubernetes backend on the mock API server (no API server runs on these machines).
//! Only how the test looks at and disturbs the workloads differs; the controller does
//! not know which backend it drives.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hive::orchestrator::kubernetes::{apiserver::ApiServer, mock};
use serde_json::{json, Value};

use crate::harness::*;

/// A workload as the test sees it on the backend: its id, whether it runs.
type Seen = (String, bool);

/// How the test looks at and disturbs a backend from outside Hive.
#[async_trait]
trait Outside: Send + Sync {
    /// The agent's workloads.
    async fn workloads(&self, hive: &Hive, agent: &str) -> Vec<Seen>;
    /// Removes a workload as an operator would (`docker rm -f`, `kubectl delete pod`).
    async fn remove(&self, hive: &Hive, id: &str);
    /// The names of the agent's volumes (`spec.volumes[].name`).
    async fn volumes(&self, hive: &Hive, agent: &str) -> Vec<String>;
    /// The workload `id` writes `line` (on Docker its command does so itself).
    fn writes(&self, id: &str, line: &str);
}

struct Docker;

#[async_trait]
impl Outside for Docker {
    async fn workloads(&self, hive: &Hive, agent: &str) -> Vec<Seen> {
        hive.containers()
            .await
            .into_iter()
            .filter(|c| {
                c.labels
                    .as_ref()
                    .and_then(|l| l.get("hive.agent"))
                    .map(String::as_str)
                    == Some(agent)
            })
            .map(|c| {
                (
                    c.id.unwrap_or_default(),
                    c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
                )
            })
            .collect()
    }

    async fn remove(&self, _hive: &Hive, id: &str) {
        engine()
            .await
            .remove_container(
                id,
                Some(bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .unwrap();
    }

    async fn volumes(&self, hive: &Hive, agent: &str) -> Vec<String> {
        let filters = std::collections::HashMap::from([(
            "label".to_string(),
            vec![
                format!("hive.instance={}", hive.instance),
                format!("hive.agent={agent}"),
            ],
        )]);
        let mut names: Vec<String> = engine()
            .await
            .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .unwrap()
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.labels.get("hive.volume").cloned())
            .collect();
        names.sort();
        names
    }

    fn writes(&self, _id: &str, _line: &str) {}
}

struct Kubernetes(ApiServer);

impl Kubernetes {
    fn of_agent(&self, resource: &str, agent: &str) -> Vec<Value> {
        self.0
            .objects(resource)
            .into_iter()
            .filter(|o| o["metadata"]["labels"]["hive.agent"] == agent)
            .collect()
    }
}

#[async_trait]
impl Outside for Kubernetes {
    async fn workloads(&self, _hive: &Hive, agent: &str) -> Vec<Seen> {
        self.of_agent("pods", agent)
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                    p["status"]["phase"] == "Running",
                )
            })
            .collect()
    }

    async fn remove(&self, _hive: &Hive, id: &str) {
        assert!(self.0.delete("pods", id));
    }

    async fn volumes(&self, _hive: &Hive, agent: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .of_agent("persistentvolumeclaims", agent)
            .iter()
            .map(|c| {
                c["metadata"]["labels"]["hive.volume"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        names.sort();
        names
    }

    fn writes(&self, id: &str, line: &str) {
        self.0.set_logs(id, &format!("{line}\n"));
    }
}

/// A Hive on the Kubernetes backend over a mock API server, and that server.
async fn on_kubernetes() -> (Hive, Kubernetes) {
    let server = ApiServer::default();
    let shared = Arc::new(Mutex::new(server.clone()));
    let hive = Hive::start_on_backend(Arc::new(move |config: &hive::Config| {
        let (backend, handle) = mock("agents", &config.instance);
        shared.lock().unwrap().serve_on(handle);
        Arc::new(backend) as Arc<dyn hive::orchestrator::Backend>
    }))
    .await;
    (hive, Kubernetes(server))
}

/// Waits until the agent runs its current generation on a workload other than `not`.
async fn running_on_new(hive: &Hive, name: &str, not: &str) -> String {
    wait_for(
        &format!("{name} to run on a workload other than {not}"),
        || async {
            let a = hive.get(name).await?;
            let settled = a["status"]["observedGeneration"] == a["metadata"]["generation"]
                && a["status"]["phase"] == "Running";
            let id = a["status"]["containerId"].as_str()?.to_string();
            (settled && id != not).then_some(id)
        },
    )
    .await
}

/// Create, change, stop, start, drift, delete: what every backend must do alike.
async fn lifecycle(hive: &Hive, outside: &dyn Outside) {
    let volumes = "  volumes:\n  - {name: keep, mountPath: /keep, retain: true}\n  - {name: scratch, mountPath: /scratch}\n";
    let with = |extra: &str| agent_yaml("c1", &format!("  env: {{V: \"1\"}}\n{volumes}{extra}"));
    assert_eq!(hive.put_yaml("c1", &with("")).await.status(), 201);
    let first = container_id(&hive.wait_phase("c1", "Running").await);
    let running = |id: &str| vec![(id.to_string(), true)];
    assert_eq!(outside.workloads(hive, "c1").await, running(&first));
    assert_eq!(outside.volumes(hive, "c1").await, ["keep", "scratch"]);

    // A change of spec replaces the workload.
    let changed = agent_yaml("c1", &format!("  env: {{V: \"2\"}}\n{volumes}"));
    assert_eq!(hive.put_yaml("c1", &changed).await.status(), 200);
    let second = running_on_new(hive, "c1", &first).await;
    wait_for("the old workload to go", || async {
        (outside.workloads(hive, "c1").await == running(&second)).then_some(())
    })
    .await;

    // Stopped: nothing of it runs. Started: it runs again.
    let stopped = agent_yaml(
        "c1",
        &format!("  env: {{V: \"2\"}}\n{volumes}  state: Stopped\n"),
    );
    assert_eq!(hive.put_yaml("c1", &stopped).await.status(), 200);
    let a = hive.wait_phase("c1", "Stopped").await;
    assert_eq!(
        outside.volumes(hive, "c1").await,
        ["keep", "scratch"],
        "volumes outlive a stop"
    );
    assert!(
        outside
            .workloads(hive, "c1")
            .await
            .iter()
            .all(|(_, up)| !up),
        "{a:#}"
    );
    assert_eq!(hive.put_yaml("c1", &changed).await.status(), 200);
    let started = container_id(&hive.wait_phase("c1", "Running").await);

    // Drift: its workload removed out of band is made again.
    outside.remove(hive, &started).await;
    let third = running_on_new(hive, "c1", &started).await;
    assert_eq!(outside.workloads(hive, "c1").await, running(&third));

    // Deleted: its workload and its volumes go, except the one to retain.
    let r = hive
        .req(reqwest::Method::DELETE, "/v1/agents/c1")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    wait_for("c1 to be deleted", || async {
        hive.get("c1").await.is_none().then_some(())
    })
    .await;
    wait_for("its workloads and unretained volumes to go", || async {
        (outside.workloads(hive, "c1").await.is_empty()
            && outside.volumes(hive, "c1").await == ["keep"])
        .then_some(())
    })
    .await;
}

/// A restart asked for, and the agent's output: alike on every backend.
async fn restart_and_logs(hive: &Hive, outside: &dyn Outside) {
    let talker = agent_yaml("talker", "").replace(
        "[\"/bin/sleep\", \"3600\"]",
        "[/bin/sh, -c, 'echo hello from talker; exec /bin/sleep 3600']",
    );
    assert!(talker.contains("echo hello"), "{talker}");
    assert_eq!(hive.put_yaml("talker", &talker).await.status(), 201);
    let id = container_id(&hive.wait_phase("talker", "Running").await);
    outside.writes(&id, "hello from talker");
    wait_for("its output", || async {
        let r = hive
            .req(reqwest::Method::GET, "/v1/agents/talker/logs")
            .send()
            .await
            .ok()?;
        r.text()
            .await
            .ok()?
            .contains("hello from talker")
            .then_some(())
    })
    .await;
    let r = hive
        .post_json(
            "/v1/agents/talker/action",
            &serde_json::json!({"action": "restart"}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let events = wait_for("a Restarted event and the agent running again", || async {
        let a = hive.get("talker").await?;
        let events = hive.get_json("/v1/agents/talker/events").await;
        let restarted = events["items"]
            .as_array()?
            .iter()
            .any(|e| e["reason"] == "Restarted");
        let settled = a["status"]["phase"] == "Running"
            && a["status"]["observedGeneration"] == a["metadata"]["generation"];
        // What the status names is what runs (a Restarted event can be seen before the
        // pass that recorded it writes the status).
        let id = a["status"]["containerId"].as_str()?.to_string();
        let runs = outside.workloads(hive, "talker").await == vec![(id, true)];
        (restarted && settled && runs).then_some(events)
    })
    .await;
    let restarts = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "Restarted")
        .count();
    assert_eq!(restarts, 1, "restarted once: {events:#}");
}

#[tokio::test]
async fn restart_and_logs_on_docker() {
    let hive = Hive::start().await;
    restart_and_logs(&hive, &Docker).await;
}

#[tokio::test]
async fn restart_and_logs_on_kubernetes() {
    let (hive, kubernetes) = on_kubernetes().await;
    restart_and_logs(&hive, &kubernetes).await;
    // Exec is Docker's only, for now: a running agent on Kubernetes says so (501), and
    // Hive sends the API server nothing for it.
    let before = kubernetes.0.take_requests().len();
    let r = hive
        .post_json(
            "/v1/agents/talker/exec",
            &serde_json::json!({"command": ["true"]}),
        )
        .await;
    assert_eq!(r.status(), 501);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "not_implemented", "{e}");
    let r = hive
        .req(
            reqwest::Method::GET,
            "/v1/agents/talker/files?path=/etc/hostname",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
    assert!(before > 0);
    assert!(kubernetes
        .0
        .take_requests()
        .iter()
        .all(|r| !format!("{r:?}").contains("exec")));
}

#[tokio::test]
async fn the_lifecycle_on_docker() {
    let hive = Hive::start().await;
    lifecycle(&hive, &Docker).await;
}

#[tokio::test]
async fn the_lifecycle_on_kubernetes() {
    let (hive, kubernetes) = on_kubernetes().await;
    lifecycle(&hive, &kubernetes).await;
    // Every request, as the verb RBAC would check, is one the Role in
    // deployment/kubernetes/rbac.yaml grants.
    let seen = kubernetes.0.take_requests();
    assert!(seen.len() > 20, "{} requests", seen.len());
    let granted = role_grants();
    for s in &seen {
        let need = rbac_verb(s);
        assert!(
            granted.contains(&need),
            "{} {} needs {need:?}, which the Role does not grant",
            s.line(),
            s.query
        );
    }
}

/// (API group, resource, verb) the Role grants, read from the deployment's rbac.yaml.
fn role_grants() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deployment/kubernetes/rbac.yaml"),
    )
    .unwrap();
    let mut granted = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
        if doc["kind"] != "Role" {
            continue;
        }
        for rule in doc["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        granted.push((
                            group.as_str().unwrap().to_string(),
                            resource.as_str().unwrap().to_string(),
                            verb.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    assert!(!granted.is_empty(), "no Role in rbac.yaml");
    granted
}

/// The RBAC (group, resource, verb) a request needs, as the API server derives it.
fn rbac_verb(s: &hive::orchestrator::kubernetes::apiserver::Seen) -> (String, String, String) {
    let parts: Vec<&str> = s.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _, rest @ ..] => (*group, rest),
        _ => panic!("unexpected path {}", s.path),
    };
    let (resource, name, sub) = match rest {
        ["namespaces", _, resource] => (*resource, None, None),
        ["namespaces", _, resource, name] => (*resource, Some(*name), None),
        ["namespaces", _, resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => panic!("unexpected path {}", s.path),
    };
    let watch = s
        .query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (s.method.as_str(), name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        (m, _) => panic!("unexpected method {m}"),
    };
    let resource = match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    (group.to_string(), resource, verb.to_string())
}

/// The mock API server on a real TCP port, for a Hive that connects through a kubeconfig.
async fn serve_over_tcp(server: ApiServer) -> String {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let server = server.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            Ok::<_, hyper::Error>(
                                server.answer(http::Request::from_parts(parts, body)),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// `hive serve --backend kubernetes --kubeconfig FILE` as a process: the real client
/// (kubeconfig, HTTP, the watch) against the mock API server on a TCP port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hive_process_runs_agents_through_its_kubeconfig() {
    let server = ApiServer::default();
    let url = serve_over_tcp(server.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster: {{server: \"{url}\"}}\n\
             users:\n- name: hive\n  user: {{token: not-a-real-token}}\ncontexts:\n\
             - name: mock\n  context: {{cluster: mock, user: hive, namespace: agents}}\n\
             current-context: mock\n"
        ),
    )
    .unwrap();
    let hive = Hive::process(
        std::collections::HashMap::new(),
        vec![
            "--backend".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
        ],
    )
    .await;
    wait_for("Hive to be ready (lease taken, Pods listed)", || async {
        (hive.get_open("/readyz").await.status() == 200).then_some(())
    })
    .await;
    hive.running("k1", "").await;
    let pods = server.objects("pods");
    assert_eq!(pods.len(), 1);
    assert_eq!(
        pods[0]["metadata"]["namespace"], "agents",
        "the kubeconfig's namespace"
    );
    assert_eq!(
        pods[0]["metadata"]["labels"]["hive.instance"],
        json!(hive.instance)
    );
    let lease = server
        .object("leases", &format!("hive-{}", hive.instance))
        .unwrap();
    assert!(lease["spec"]["holderIdentity"].is_string());
    // A Pod deleted out of band is seen through the watch and made again.
    let first = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    server.delete("pods", &first);
    running_on_new(&hive, "k1", &first).await;
}
