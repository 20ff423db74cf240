//! Reaching the API server: the connection the settings ask for, and its errors in the
//! orchestrator's words.

use kube::{Client, Config};

use super::KubernetesSettings;
use crate::orchestrator::OrchestratorError;

/// Connects as the settings say: a kubeconfig file, else the in-cluster service account,
/// else the usual kubeconfig.
pub(super) async fn connect(
    settings: &KubernetesSettings,
) -> Result<(Client, String), OrchestratorError> {
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        OrchestratorError::Unavailable(format!("{what}: {e}"))
    };
    let config = match &settings.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                unavailable(&format!("cannot read --kubeconfig {}", path.display()), &e)
            })?;
            Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| unavailable("cannot use --kubeconfig", &e))?
        }
        None => match Config::incluster() {
            Ok(c) => c,
            Err(_) => Config::infer()
                .await
                .map_err(|e| unavailable("no in-cluster service account and no kubeconfig", &e))?,
        },
    };
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| unavailable("cannot make a client", &e))?;
    Ok((client, namespace))
}

pub(super) fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// The API server's answer in the orchestrator's words.
pub(super) fn map_err(e: kube::Error) -> OrchestratorError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => OrchestratorError::NotFound(s.message.clone()),
        kube::Error::Api(s) if s.code >= 500 || s.code == 429 => OrchestratorError::Unavailable(
            format!("the API server answered {}: {}", s.code, s.message),
        ),
        kube::Error::Api(s) => OrchestratorError::Refused(format!(
            "the API server refused ({} {}): {}",
            s.code, s.reason, s.message
        )),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            OrchestratorError::Unavailable(e.to_string())
        }
        _ => OrchestratorError::Refused(e.to_string()),
    }
}
