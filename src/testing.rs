//! What the tests and the benchmark share (the `testing` feature; `tests/` and `bench/`
//! enable it, the `hive` binary does not): the in-memory backend, the one-file busybox
//! image every test agent runs, a `hive serve` child process, and a [`Config`] from
//! flags.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::orchestrator::fake::FakeOrchestrator;
use crate::Config;

/// A `hive serve` configuration from flags, as the binary would read them (the
/// environment is not consulted for the API key).
pub fn config(args: &[&str]) -> Result<Config, clap::Error> {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        config: Config,
    }
    let mut argv = vec!["hive"];
    argv.extend_from_slice(args);
    let mut c = <Flags as clap::Parser>::try_parse_from(argv)?.config;
    c.api_key = None;
    Ok(c)
}

/// A tar archive of a root file system holding Debian's static busybox at `/bin/busybox`
/// and `tools` linked to it: `docker import` makes it an image without any registry.
pub fn busybox_tar(tools: &[&str]) -> std::io::Result<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox").map_err(|e| {
        std::io::Error::new(
            e.kind(),
            "/bin/busybox (Debian's busybox-static) is needed to build the test image",
        )
    })?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(busybox.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, "bin/busybox", busybox.as_slice())?;
    for tool in tools {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        tar.append_link(&mut h, format!("bin/{tool}"), "busybox")?;
    }
    tar.into_inner()
}

/// A `hive serve` child process, its log in a file.
pub struct ServeProcess {
    pub child: Child,
    /// `http://host:port` it listens on.
    pub url: String,
    pub log: PathBuf,
}

impl ServeProcess {
    /// Runs `binary serve --listen 127.0.0.1:0 ARGS` with `env` (None removes a variable),
    /// optionally under a file descriptor limit, and waits up to `deadline` for the
    /// address it logs.
    pub fn start(
        binary: &Path,
        args: &[String],
        env: &[(String, Option<String>)],
        nofile: Option<u32>,
        log: PathBuf,
        deadline: Duration,
    ) -> std::io::Result<ServeProcess> {
        let out = std::fs::File::create(&log)?;
        let mut cmd = match nofile {
            // Through a shell that sets the limit and execs Hive.
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", "ulimit -n \"$0\" && exec \"$@\"", &n.to_string()])
                    .arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(out);
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd.spawn()?;
        let started = Instant::now();
        loop {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(&log) {
                f.read_to_string(&mut text).ok();
            }
            if let Some(addr) = listening_addr(&text) {
                return Ok(ServeProcess {
                    child,
                    url: format!("http://{addr}"),
                    log,
                });
            }
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "hive exited with {status} before listening:\n{text}"
                )));
            }
            if started.elapsed() > deadline {
                let _ = child.kill();
                return Err(std::io::Error::other(format!(
                    "hive did not listen within {deadline:?}:\n{text}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The address in a "listening" log line: `addr=HOST:PORT` as text, `"addr":"HOST:PORT"`
/// as JSON.
fn listening_addr(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("listening"))?;
    match line.split("addr=").nth(1) {
        Some(a) => a.split_whitespace().next().map(str::to_string),
        None => line
            .split("\"addr\":\"")
            .nth(1)?
            .split('"')
            .next()
            .map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_from_text_and_json_logs() {
        assert_eq!(
            listening_addr("x\n2026 INFO hive: listening addr=127.0.0.1:5 instance=a\n").as_deref(),
            Some("127.0.0.1:5")
        );
        assert_eq!(
            listening_addr(r#"{"fields":{"message":"listening","addr":"127.0.0.1:6"}}"#).as_deref(),
            Some("127.0.0.1:6")
        );
    }

    #[test]
    fn flags_make_a_config() {
        let c = config(&["--data-dir", "/tmp/x", "--instance", "t1"]).unwrap();
        assert_eq!(c.instance, "t1");
        assert!(c.api_key.is_none());
        assert!(config(&["--bogus"]).is_err());
    }
}
