//! What is never allowed, whatever the policy file says: fields of a document that ask
//! for a privileged container, the host's namespaces, devices, host paths or the Docker
//! socket, refused by name before anything else is read.

use serde_json::Value;

use super::Invalid;

/// Fields that ask for what is never allowed, anywhere under `spec`, with the reason.
const NEVER: &[(&str, &str)] = &[
    ("privileged", "privileged containers are never allowed"),
    (
        "hostNetwork",
        "the host's network namespace is never shared",
    ),
    ("hostPID", "the host's PID namespace is never shared"),
    ("hostIPC", "the host's IPC namespace is never shared"),
    ("hostUTS", "the host's UTS namespace is never shared"),
    (
        "networkMode",
        "network modes are Hive's to choose; the host network is never allowed",
    ),
    ("pidMode", "the host's PID namespace is never shared"),
    ("ipcMode", "the host's IPC namespace is never shared"),
    ("devices", "devices are never passed through"),
    ("hostPath", "host paths are never mounted"),
    ("binds", "host paths are never mounted"),
    ("mounts", "host paths are never mounted"),
    (
        "source",
        "volumes are named by Hive; host paths are never mounted",
    ),
    ("securityOpt", "security options are Hive's to set"),
    (
        "capAdd",
        "use spec.capabilities, checked against the policy's allowlist",
    ),
    ("user", "the user is the image's"),
];

/// Refuses a document that asks for something never allowed, naming the field.
pub fn screen(document: &Value) -> Result<(), Invalid> {
    fn walk(v: &Value, path: &str) -> Result<(), Invalid> {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let here = format!("{path}.{k}");
                    // Variable names are the agent's business; only their values are looked at.
                    let is_env_name = path == "spec.env";
                    if let Some((_, why)) = NEVER
                        .iter()
                        .find(|(f, _)| !is_env_name && f.eq_ignore_ascii_case(k))
                    {
                        return Err(Invalid::new(here, format!("{why} (policy rule never)")));
                    }
                    walk(child, &here)?;
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{path}[{i}]"))?;
                }
            }
            Value::String(s) if s.contains("docker.sock") => {
                return Err(Invalid::new(
                    path,
                    "nothing may reach the Docker socket (policy rule never)",
                ));
            }
            _ => {}
        }
        Ok(())
    }
    match document.get("spec") {
        Some(spec) => walk(spec, "spec"),
        None => Ok(()),
    }
}
