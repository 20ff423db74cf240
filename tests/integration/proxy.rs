//! A proxy in front of the Docker engine for fault tests: it passes traffic through, and
//! on command cuts every connection (the engine is gone) or stalls (the engine accepts
//! connections and never answers). It dials the engine the tests use: `DOCKER_HOST`
//! (unix:// or tcp://), else the local socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Drop every connection and refuse new ones.
    Cut,
    /// Keep connections open but forward nothing, as a hung engine.
    Stall,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where the engine is.
#[derive(Clone, Debug)]
enum Upstream {
    Unix(PathBuf),
    Tcp(String),
}

impl Upstream {
    fn from_env() -> Upstream {
        match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("tcp://") || h.starts_with("http://") => Upstream::Tcp(
                h.trim_start_matches("tcp://")
                    .trim_start_matches("http://")
                    .to_string(),
            ),
            Ok(h) if !h.is_empty() => {
                Upstream::Unix(PathBuf::from(h.trim_start_matches("unix://")))
            }
            _ => Upstream::Unix(PathBuf::from("/var/run/docker.sock")),
        }
    }

    async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Upstream::Unix(p) => Box::new(UnixStream::connect(p).await?),
            Upstream::Tcp(a) => Box::new(TcpStream::connect(a).await?),
        })
    }
}

/// A socket that stands in for the engine.
pub struct SocketProxy {
    pub path: PathBuf,
    mode: Arc<watch::Sender<Mode>>,
}

impl SocketProxy {
    pub fn start(dir: &Path) -> SocketProxy {
        let path = dir.join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (mode, _) = watch::channel(Mode::Pass);
        let mode = Arc::new(mode);
        let upstream = Upstream::from_env();
        let modes = mode.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut watching = modes.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let now = *watching.borrow_and_update();
                    match now {
                        Mode::Cut => return,
                        // Hold the connection and answer nothing until the mode changes.
                        Mode::Stall => {
                            let _held = client;
                            let _ = watching.wait_for(|m| *m != Mode::Stall).await;
                            return;
                        }
                        Mode::Pass => {}
                    }
                    let Ok(mut upstream) = upstream.connect().await else {
                        return;
                    };
                    let mut client = client;
                    let ended_by_mode = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => false,
                        // Cut or stalled: this connection ends or hangs from now on.
                        r = watching.wait_for(|m| *m != Mode::Pass) => r.is_ok(),
                    };
                    let stalled = ended_by_mode && *watching.borrow() == Mode::Stall;
                    if stalled {
                        let _ = watching.wait_for(|m| *m != Mode::Stall).await;
                    }
                });
            }
        });
        SocketProxy { path, mode }
    }

    /// `unix://` URL of the proxy, for DOCKER_HOST.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}
