//! Exec: a command run once in an agent's running container on a client's behalf, the
//! reason nobody needs the engine's socket to look inside an agent. Admins may in any
//! agent; operators in their owner's, unless the policy's `exec` rule says no; viewers
//! never. Every exec is audited with its command, exit code, bytes in and out and
//! duration, never its input or output.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::inside::{inside_error, running_container};
use super::{Service, ServiceError};
use crate::access::Principal;
use crate::agent::{clip, validate_env_name, SpecDuration};
use crate::orchestrator::ExecSpec;
use crate::wire::{ExecRequest, ExecResult};

/// The most bytes kept of each of stdout and stderr.
pub const MAX_EXEC_OUTPUT: usize = 1024 * 1024;
/// The most bytes of input (the request's body is at most 1 MiB in all).
pub const MAX_EXEC_STDIN: usize = 512 * 1024;
/// The most arguments, and bytes in all of them.
const MAX_ARGS: usize = 256;
const MAX_ARGS_BYTES: usize = 128 * 1024;
/// The most variables, and bytes in one value.
const MAX_ENV: usize = 64;
const MAX_ENV_VALUE: usize = 32 * 1024;
/// How long an exec is waited for unless it says, and at most.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

impl Service {
    /// [`Service::exec`] in a task of its own, so that a command that started is waited
    /// for and audited to its end even when the caller goes away (a dropped connection,
    /// a revoked key).
    pub async fn exec_to_end(
        self: &Arc<Self>,
        who: &Principal,
        name: &str,
        request: ExecRequest,
    ) -> Result<ExecResult, ServiceError> {
        let (service, who, name) = (Arc::clone(self), who.clone(), name.to_string());
        tokio::spawn(async move { service.exec(&who, &name, request).await })
            .await
            .unwrap_or_else(|e| Err(ServiceError::Internal(format!("the exec failed: {e}"))))
    }

    /// Runs `request` in the agent `name`'s running container, as the caller may.
    pub async fn exec(
        &self,
        who: &Principal,
        name: &str,
        request: ExecRequest,
    ) -> Result<ExecResult, ServiceError> {
        let started = Instant::now();
        let argv = clip(&format!("{:?}", request.command), 256);
        let stdin_bytes = request.stdin.as_ref().map_or(0, String::len);
        let result = self.exec_checked(who, name, request).await;
        let detail = match &result {
            Ok(r) => format!(
                "command {argv}, exit code {}, {stdin_bytes} B in, {} B out, {:.1} s{}",
                r.exit_code.map_or("none".into(), |c| c.to_string()),
                r.stdout.len() + r.stderr.len(),
                started.elapsed().as_secs_f64(),
                if r.timed_out { ", timed out" } else { "" }
            ),
            Err(_) => format!("command {argv}"),
        };
        self.audit_detailed(who, "exec", name, &result, 200, Some(detail));
        result
    }

    async fn exec_checked(
        &self,
        who: &Principal,
        name: &str,
        request: ExecRequest,
    ) -> Result<ExecResult, ServiceError> {
        let record = self.reachable(who, name, "run commands in")?;
        let spec = exec_spec(request)?;
        let (id, uid) = running_container(&record, name)?;
        let out = self
            .orchestrator
            .exec(&id, uid, &spec)
            .await
            .map_err(|e| inside_error(name, e))?;
        Ok(ExecResult {
            exit_code: out.exit_code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            truncated: out.truncated,
            timed_out: out.timed_out,
        })
    }
}

/// The request as the backend runs it, or the first thing wrong with it, named.
fn exec_spec(r: ExecRequest) -> Result<ExecSpec, ServiceError> {
    let bad = |field: &str, message: String| {
        ServiceError::Invalid(crate::agent::Invalid::new(field, message))
    };
    if r.command.is_empty() || r.command[0].is_empty() {
        return Err(bad(
            "command",
            "names no program; give at least one word".into(),
        ));
    }
    if r.command.len() > MAX_ARGS {
        return Err(bad("command", format!("has more than {MAX_ARGS} words")));
    }
    if r.command.iter().map(String::len).sum::<usize>() > MAX_ARGS_BYTES {
        return Err(bad(
            "command",
            format!("is longer than {MAX_ARGS_BYTES} bytes"),
        ));
    }
    if let Some(i) = r.command.iter().position(|a| a.contains('\0')) {
        return Err(bad(&format!("command[{i}]"), "holds a NUL byte".into()));
    }
    if r.stdin.as_ref().is_some_and(|s| s.len() > MAX_EXEC_STDIN) {
        return Err(bad(
            "stdin",
            format!("is longer than {MAX_EXEC_STDIN} bytes"),
        ));
    }
    if r.env.len() > MAX_ENV {
        return Err(bad("env", format!("has more than {MAX_ENV} variables")));
    }
    for (k, v) in &r.env {
        validate_env_name(k).map_err(|m| bad(&format!("env.{}", clip(k, 64)), m))?;
        if v.len() > MAX_ENV_VALUE || v.contains('\0') {
            return Err(bad(
                &format!("env.{k}"),
                format!("must be at most {MAX_ENV_VALUE} bytes without NUL"),
            ));
        }
    }
    if let Some(dir) = &r.working_dir {
        if !dir.starts_with('/') || dir.len() > 4096 || dir.contains('\0') {
            return Err(bad(
                "workingDir",
                "must be an absolute path (at most 4096 bytes)".into(),
            ));
        }
    }
    let timeout = match &r.timeout {
        None => DEFAULT_TIMEOUT,
        Some(text) => {
            let d = SpecDuration::parse(text)
                .map_err(|m| bad("timeout", m))?
                .get();
            if d < Duration::from_secs(1) || d > MAX_TIMEOUT {
                return Err(bad("timeout", "must be between 1s and 10m".into()));
            }
            d
        }
    };
    Ok(ExecSpec {
        command: r.command,
        stdin: r.stdin.map(String::into_bytes),
        env: r.env.into_iter().collect(),
        working_dir: r.working_dir,
        timeout,
        max_output: MAX_EXEC_OUTPUT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> ExecRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn an_exec_request_is_checked_field_by_field_before_anything_runs() {
        let ok = exec_spec(request(serde_json::json!({
            "command": ["sh", "-c", "echo hi"], "stdin": "x", "timeout": "5s",
            "env": {"A": "1"}, "workingDir": "/tmp"
        })))
        .unwrap();
        assert_eq!(ok.timeout, Duration::from_secs(5));
        assert_eq!(ok.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(
            exec_spec(request(serde_json::json!({"command": ["true"]})))
                .unwrap()
                .timeout,
            DEFAULT_TIMEOUT
        );
        for (bad, field) in [
            (serde_json::json!({"command": []}), "command"),
            (serde_json::json!({"command": [""]}), "command"),
            (serde_json::json!({"command": ["a\u{0}b"]}), "command[0]"),
            (
                serde_json::json!({"command": ["x"], "timeout": "1h"}),
                "timeout",
            ),
            (
                serde_json::json!({"command": ["x"], "timeout": "soon"}),
                "timeout",
            ),
            (
                serde_json::json!({"command": ["x"], "workingDir": "tmp"}),
                "workingDir",
            ),
            (
                serde_json::json!({"command": ["x"], "env": {"A B": "1"}}),
                "env.A B",
            ),
            (
                serde_json::json!({"command": ["x"], "stdin": "y".repeat(MAX_EXEC_STDIN + 1)}),
                "stdin",
            ),
            (
                serde_json::json!({"command": vec!["x"; MAX_ARGS + 1]}),
                "command",
            ),
        ] {
            match exec_spec(request(bad.clone())) {
                Err(ServiceError::Invalid(i)) => assert_eq!(i.field, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(serde_json::from_value::<ExecRequest>(
            serde_json::json!({"command": ["x"], "user": "root"})
        )
        .is_err());
    }
}
