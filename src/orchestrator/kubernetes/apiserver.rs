//! A mock Kubernetes API server for tests, behind the backend's [`mock`](super::mock)
//! handle (kube-rs's way of testing controllers, since no API server runs on these
//! machines). It keeps objects in memory and answers as a real server would for what Hive
//! uses: get, list and watch by label selector, create (409 when the name is taken),
//! replace (409 on a stale resourceVersion), delete, Pod logs and `/version`; the
//! kubelet's part (a new Pod runs once the Secret its `envFrom` names exists, else waits
//! in CreateContainerConfigError; an exit is restarted or ends the Pod as its
//! restartPolicy says) and the garbage collector's (a Secret goes with the Pod that owns
//! it). Every request is recorded with its method, path, query and body, so tests assert
//! what Hive asked. It deals in JSON only: what it checks, it checks by the API's rules,
//! not by Hive's types.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::mock;

/// One request Hive made.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
}

impl Seen {
    /// `METHOD path`, for asserting a sequence of requests.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// The mock server: clone it freely, all clones share one state.
#[derive(Clone, Default)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Objects by (resource, name).
    objects: BTreeMap<(String, String), Value>,
    /// The last resourceVersion handed out.
    version: u64,
    /// Changes so far: (resourceVersion, resource, type, object), for watches that start
    /// from a version.
    history: Vec<(u64, String, &'static str, Value)>,
    watchers: Vec<Watcher>,
    seen: Vec<Seen>,
    /// Pod logs by Pod name.
    logs: BTreeMap<String, String>,
    /// Images the kubelet cannot pull.
    bad_images: Vec<String>,
}

struct Watcher {
    resource: String,
    selector: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// What a path names.
struct Target {
    resource: String,
    name: Option<String>,
    sub: Option<String>,
    namespace: String,
    api_version: &'static str,
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "pods" => "Pod",
        "secrets" => "Secret",
        "services" => "Service",
        "persistentvolumeclaims" => "PersistentVolumeClaim",
        "leases" => "Lease",
        _ => "Unknown",
    }
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", "coordination.k8s.io", "v1", rest @ ..] => ("coordination.k8s.io/v1", rest),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, resource, tail @ ..] if tail.len() <= 2 => Some(Target {
            resource: resource.to_string(),
            name: tail.first().map(|s| s.to_string()),
            sub: tail.get(1).map(|s| s.to_string()),
            namespace: ns.to_string(),
            api_version,
        }),
        _ => None,
    }
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_map(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn parse_selector(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim_end_matches('=').to_string(), v.to_string()))
        .collect()
}

fn matches(object: &Value, selector: &[(String, String)]) -> bool {
    selector
        .iter()
        .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn answer(code: u16, body: Value) -> mock::Response {
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a valid response")
}

fn status(code: u16, reason: &str, message: String) -> mock::Response {
    answer(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// Whether `name` is a DNS-1035 label (what a Service's name must be).
fn dns_1035(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-')
}

impl ApiServer {
    /// A new server answering every request that reaches `handle`.
    pub fn serve(handle: mock::Handle) -> ApiServer {
        let server = ApiServer::default();
        server.serve_on(handle);
        server
    }

    /// Answers the requests of another backend's `handle` too, from the same objects,
    /// until that backend is dropped.
    pub fn serve_on(&self, mut handle: mock::Handle) {
        let s = self.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = handle.next_request().await {
                reply.send_response(s.handle(request));
            }
        });
    }

    /// The requests so far, and forgets them.
    pub fn take_requests(&self) -> Vec<Seen> {
        std::mem::take(&mut self.state.lock().unwrap().seen)
    }

    /// The objects of a resource (`pods`, `secrets`, ...).
    pub fn objects(&self, resource: &str) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.objects
            .iter()
            .filter(|((r, _), _)| r == resource)
            .map(|(_, o)| o.clone())
            .collect()
    }

    pub fn object(&self, resource: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().unwrap();
        s.objects
            .get(&(resource.to_string(), name.to_string()))
            .cloned()
    }

    /// Puts an object there as someone else would (a foreign Service, say).
    pub fn put(&self, resource: &str, mut object: Value) {
        let mut s = self.state.lock().unwrap();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        s.version += 1;
        object["metadata"]["resourceVersion"] = json!(s.version.to_string());
        object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        s.change(resource, "ADDED", object.clone());
        s.objects.insert((resource.to_string(), name), object);
    }

    /// Deletes an object out of band (`kubectl delete`), with its owned objects.
    pub fn delete(&self, resource: &str, name: &str) -> bool {
        self.state.lock().unwrap().remove(resource, name).is_some()
    }

    /// The agent's process in Pod `name` exits with `code`: the kubelet restarts it or
    /// the Pod ends, as its restartPolicy says.
    pub fn exit_pod(&self, name: &str, code: i64) {
        let mut s = self.state.lock().unwrap();
        let Some(mut pod) = s.objects.get(&("pods".into(), name.into())).cloned() else {
            return;
        };
        let policy = pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_string();
        let restarts = pod["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0);
        let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
        if restart && s.missing_secret(&pod).is_some() {
            // Restarting needs the environment again.
            s.update("pods", name, pod);
            s.kubelet_start(name);
            return;
        }
        if restart {
            pod["status"]["containerStatuses"][0]["restartCount"] = json!(restarts + 1);
            pod["status"]["containerStatuses"][0]["state"] =
                json!({"running": {"startedAt": now()}});
        } else {
            pod["status"]["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
            pod["status"]["containerStatuses"][0]["ready"] = json!(false);
            pod["status"]["containerStatuses"][0]["state"] = json!({"terminated": {
                "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": now(), "finishedAt": now()}});
        }
        s.update("pods", name, pod);
    }

    /// Sets what Pod `name` has written.
    pub fn set_logs(&self, name: &str, text: &str) {
        self.state
            .lock()
            .unwrap()
            .logs
            .insert(name.to_string(), text.to_string());
    }

    /// The kubelet cannot pull `image` from now on.
    pub fn refuse_image(&self, image: &str) {
        self.state
            .lock()
            .unwrap()
            .bad_images
            .push(image.to_string());
    }

    /// Answers one request (tests that serve it over TCP call this).
    pub fn answer(&self, request: mock::Request) -> mock::Response {
        self.handle(request)
    }

    fn handle(&self, request: mock::Request) -> mock::Response {
        let (parts, body) = request.into_parts();
        let method = parts.method.to_string();
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or_default().to_string();
        let body: Option<Value> = (!body.is_empty())
            .then(|| serde_json::from_slice(&body).ok())
            .flatten();
        let mut s = self.state.lock().unwrap();
        s.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
        });
        if path == "/version" {
            return answer(
                200,
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "",
                       "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                       "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
            );
        }
        let Some(t) = parse_path(&path) else {
            return status(404, "NotFound", format!("the server could not find {path}"));
        };
        let q = query_map(&query);
        let kind = kind_of(&t.resource);
        let key = |name: &str| (t.resource.clone(), name.to_string());
        match (method.as_str(), &t.name, &t.sub) {
            ("GET", None, None) => {
                let selector = parse_selector(q.get("labelSelector").map_or("", |s| s.as_str()));
                if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                    let from: u64 = q
                        .get("resourceVersion")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    return s.watch(&t.resource, selector, from);
                }
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|((r, _), o)| *r == t.resource && matches(o, &selector))
                    .map(|(_, o)| o.clone())
                    .collect();
                answer(
                    200,
                    json!({"apiVersion": t.api_version, "kind": format!("{kind}List"),
                           "metadata": {"resourceVersion": s.version.to_string()}, "items": items}),
                )
            }
            ("GET", Some(name), None) => match s.objects.get(&key(name)) {
                Some(o) => answer(200, o.clone()),
                None => status(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", t.resource),
                ),
            },
            ("GET", Some(name), Some(sub)) if t.resource == "pods" && sub == "log" => {
                if !s.objects.contains_key(&key(name)) {
                    return status(404, "NotFound", format!("pods \"{name}\" not found"));
                }
                let text = s.logs.get(name).cloned().unwrap_or_default();
                http::Response::builder()
                    .status(200)
                    .header("content-type", "text/plain")
                    .body(
                        Full::new(Bytes::from(text))
                            .map_err(|never| match never {})
                            .boxed(),
                    )
                    .expect("a valid response")
            }
            ("POST", None, None) => {
                let Some(mut object) = body else {
                    return status(400, "BadRequest", "the body is not a JSON object".into());
                };
                let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
                    return status(
                        422,
                        "Invalid",
                        format!("{kind}: metadata.name: Required value"),
                    );
                };
                if t.resource == "services" && !dns_1035(&name) {
                    return status(
                        422,
                        "Invalid",
                        format!("Service \"{name}\" is invalid: metadata.name: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character"),
                    );
                }
                if s.objects.contains_key(&key(&name)) {
                    return status(
                        409,
                        "AlreadyExists",
                        format!("{} \"{name}\" already exists", t.resource),
                    );
                }
                s.version += 1;
                let meta = &mut object["metadata"];
                meta["namespace"] = json!(t.namespace);
                meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
                meta["resourceVersion"] = json!(s.version.to_string());
                meta["creationTimestamp"] = json!(now());
                object["apiVersion"] = json!(t.api_version);
                object["kind"] = json!(kind);
                if t.resource == "pods" {
                    object["status"] = json!({"phase": "Pending"});
                }
                s.objects.insert(key(&name), object.clone());
                s.change(&t.resource, "ADDED", object.clone());
                if t.resource == "pods" {
                    s.kubelet_start(&name);
                }
                if t.resource == "secrets" {
                    // The kubelet retries Pods that waited for it.
                    let waiting: Vec<String> = s
                        .objects
                        .iter()
                        .filter(|((r, _), p)| {
                            r == "pods"
                                && s.missing_secret(p).is_none()
                                && p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                                    == "CreateContainerConfigError"
                        })
                        .map(|((_, n), _)| n.clone())
                        .collect();
                    for pod in waiting {
                        s.kubelet_start(&pod);
                    }
                }
                answer(201, object)
            }
            ("PUT", Some(name), None) => {
                let Some(mut object) = body else {
                    return status(400, "BadRequest", "the body is not a JSON object".into());
                };
                let Some(current) = s.objects.get(&key(name)).cloned() else {
                    return status(
                        404,
                        "NotFound",
                        format!("{} \"{name}\" not found", t.resource),
                    );
                };
                let asked = object["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                if asked.as_deref() != current["metadata"]["resourceVersion"].as_str() {
                    return status(
                        409,
                        "Conflict",
                        format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", t.resource),
                    );
                }
                for k in ["uid", "creationTimestamp", "namespace"] {
                    object["metadata"][k] = current["metadata"][k].clone();
                }
                object["apiVersion"] = json!(t.api_version);
                object["kind"] = json!(kind);
                let object = s.update(&t.resource, name, object);
                answer(200, object)
            }
            ("DELETE", Some(name), None) => match s.remove(&t.resource, name) {
                Some(mut gone) => {
                    gone["metadata"]["deletionTimestamp"] = json!(now());
                    answer(200, gone)
                }
                None => status(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", t.resource),
                ),
            },
            _ => status(
                405,
                "MethodNotAllowed",
                format!("{method} {path} is not served"),
            ),
        }
    }
}

impl State {
    /// Tells the watches of `resource` about a change, and remembers it.
    fn change(&mut self, resource: &str, kind: &'static str, object: Value) {
        let version = self.version;
        let line = Bytes::from(json!({"type": kind, "object": object}).to_string() + "\n");
        self.watchers.retain(|w| {
            w.resource != resource
                || !matches(&object, &w.selector)
                || w.tx.send(line.clone()).is_ok()
        });
        self.history
            .push((version, resource.to_string(), kind, object));
    }

    /// Replaces an object with a new version.
    fn update(&mut self, resource: &str, name: &str, mut object: Value) -> Value {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.objects
            .insert((resource.to_string(), name.to_string()), object.clone());
        self.change(resource, "MODIFIED", object.clone());
        object
    }

    /// Removes an object, and (the garbage collector) what it owned.
    fn remove(&mut self, resource: &str, name: &str) -> Option<Value> {
        let gone = self
            .objects
            .remove(&(resource.to_string(), name.to_string()))?;
        self.version += 1;
        self.change(resource, "DELETED", gone.clone());
        let uid = gone["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let owned: Vec<(String, String)> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (r, n) in owned {
            self.remove(&r, &n);
        }
        Some(gone)
    }

    /// The Secret a Pod's `envFrom` needs and that does not exist (optional ones aside).
    fn missing_secret(&self, pod: &Value) -> Option<String> {
        pod["spec"]["containers"][0]["envFrom"]
            .as_array()?
            .iter()
            .filter(|e| e["secretRef"]["optional"] != json!(true))
            .filter_map(|e| e["secretRef"]["name"].as_str())
            .find(|n| {
                !self
                    .objects
                    .contains_key(&("secrets".to_string(), n.to_string()))
            })
            .map(str::to_string)
    }

    /// The kubelet starts a Pod's container (or cannot: its environment's Secret is
    /// missing, or its image cannot be pulled).
    fn kubelet_start(&mut self, name: &str) {
        let Some(mut pod) = self.objects.get(&("pods".into(), name.into())).cloned() else {
            return;
        };
        let image = pod["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let container = pod["spec"]["containers"][0]["name"].clone();
        if let Some(secret) = self.missing_secret(&pod) {
            pod["status"]["phase"] = json!("Pending");
            pod["status"]["containerStatuses"] = json!([{"name": container, "image": image,
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError",
                          "message": format!("secret \"{secret}\" not found")}}}]);
        } else if self.bad_images.contains(&image) {
            pod["status"]["containerStatuses"] = json!([{"name": container, "image": image,
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                          "message": format!("Back-off pulling image \"{image}\"")}}}]);
        } else {
            pod["status"]["phase"] = json!("Running");
            pod["status"]["containerStatuses"] = json!([{"name": container, "image": image,
                "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {"startedAt": now()}}}]);
        }
        self.update("pods", name, pod);
    }

    /// A watch of `resource` from version `from`: the changes since, then live ones.
    fn watch(
        &mut self,
        resource: &str,
        selector: Vec<(String, String)>,
        from: u64,
    ) -> mock::Response {
        let (tx, rx) = mpsc::unbounded_channel();
        for (version, r, kind, object) in &self.history {
            if *version > from && r == resource && matches(object, &selector) {
                let _ = tx.send(Bytes::from(
                    json!({"type": kind, "object": object}).to_string() + "\n",
                ));
            }
        }
        self.watchers.push(Watcher {
            resource: resource.to_string(),
            selector,
            tx,
        });
        let lines = futures_util::stream::unfold(rx, |mut rx| async move {
            let line = rx.recv().await?;
            Some((Ok::<_, std::io::Error>(hyper::body::Frame::data(line)), rx))
        });
        http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(lines)))
            .expect("a valid response")
    }
}
