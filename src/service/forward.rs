//! Port-forward: one TCP connection to a port of a running agent, on a client's behalf
//! (as `kubectl port-forward`), with the same rule of who may as exec. The service dials;
//! the HTTP layer only carries the bytes. Each connection is audited when it ends, with
//! its port, bytes each way and duration, never its contents.

use std::time::Duration;

use tokio::net::TcpStream;

use super::inside::{inside_error, running_container};
use super::{Service, ServiceError};
use crate::access::Principal;

/// How long dialling the agent's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What went through one forwarded connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// Bytes from the client to the agent.
    pub bytes_in: u64,
    /// Bytes from the agent to the client.
    pub bytes_out: u64,
    pub duration: Duration,
}

impl Service {
    /// A TCP connection to `port` of the running agent `name`, as the caller may.
    pub async fn connect(
        &self,
        who: &Principal,
        name: &str,
        port: u16,
    ) -> Result<TcpStream, ServiceError> {
        let result = self.connect_checked(who, name, port).await;
        // Audited when it opens (and again when it ends, with what went through), so a
        // connection is on record even if Hive stops before it ends.
        let detail = format!("port {port}, opened");
        self.audit_detailed(who, "portforward", name, &result, 101, Some(detail));
        result
    }

    /// Records a forwarded connection once it has ended.
    pub fn forwarded(&self, who: &Principal, name: &str, port: u16, f: Forwarded) {
        let detail = format!(
            "port {port}, {} B in, {} B out, {:.1} s",
            f.bytes_in,
            f.bytes_out,
            f.duration.as_secs_f64()
        );
        self.audit_detailed(
            who,
            "portforward",
            name,
            &Ok::<(), ServiceError>(()),
            101,
            Some(detail),
        );
    }

    async fn connect_checked(
        &self,
        who: &Principal,
        name: &str,
        port: u16,
    ) -> Result<TcpStream, ServiceError> {
        if port == 0 {
            return Err(ServiceError::BadRequest("port: must be 1 to 65535".into()));
        }
        let record = self.reachable(who, name, "forward ports of")?;
        let (id, uid) = running_container(&record, name)?;
        let ip = self
            .orchestrator
            .address(&id, uid)
            .await
            .map_err(|e| inside_error(name, e))?;
        let closed = |why: String| ServiceError::Conflict {
            code: "port_closed",
            message: format!("nothing answers on port {port} of agent {name:?} ({why})"),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((ip, port))).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(closed(e.kind().to_string())),
            Err(_) => Err(closed(format!(
                "no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }
}
