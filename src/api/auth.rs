//! The /v1 middleware: authenticates the caller's key (see [`crate::access`]) and hands
//! the [`Principal`](crate::access::Principal) to the handlers. The service audits every
//! mutation; what is refused before it gets there is audited here. Keys are never logged;
//! a key's id is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, AuditReason};
use super::AppState;
use crate::service::ServiceError;

/// Whether the service audited the request: handlers that call a service mutation say
/// so ([`AuditMark::through`]); a mutation refused before it got there (no valid key, a
/// body that cannot be read) is audited by the middleware instead.
#[derive(Clone, Default)]
pub struct AuditMark(Arc<AtomicBool>);

impl AuditMark {
    /// Passes a service answer on, noting that the service audited it.
    pub fn through<T>(&self, r: Result<T, ServiceError>) -> Result<T, ApiError> {
        self.0.store(true, Ordering::Relaxed);
        r.map_err(ApiError::from)
    }

    fn audited(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The key a request presents: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
/// More than one credential header is refused rather than guessed between.
pub(super) fn presented(headers: &HeaderMap) -> Result<&str, &'static str> {
    let auth: Vec<_> = headers
        .get_all(axum::http::header::AUTHORIZATION)
        .iter()
        .collect();
    let api: Vec<_> = headers.get_all("x-api-key").iter().collect();
    if auth.len() + api.len() > 1 {
        return Err("send exactly one credential: one Authorization or one X-API-Key header");
    }
    const MISSING: &str =
        "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'";
    if let Some(v) = auth.first() {
        let v = v
            .to_str()
            .map_err(|_| "the Authorization header is not text")?;
        return match v.split_once(' ') {
            Some((scheme, key))
                if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() =>
            {
                Ok(key.trim())
            }
            _ => Err("the Authorization header must be 'Bearer <key>'"),
        };
    }
    match api.first() {
        Some(v) => v
            .to_str()
            .map(str::trim)
            .map_err(|_| "the X-API-Key header is not text"),
        None => Err(MISSING),
    }
}

/// Middleware: refuse any request without a valid key; make sure every mutation is
/// audited (by the service, or here when it was refused before reaching it).
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    // Inside the nested /v1 router the URI has lost its prefix; audit the one the client sent.
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(
            || request.uri().path().to_string(),
            |u| u.path().to_string(),
        );
    // MCP's tools audit their mutations through the service; what the endpoint itself
    // refuses (a key, a host, a body) is audited here, as for /v1.
    let mcp = path == "/mcp" || path.starts_with("/mcp/");
    let mutation = matches!(
        method,
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    ) && !mcp;
    let principal = presented(request.headers())
        .and_then(|key| state.keys.authenticate(key).ok_or("invalid API key"));
    let principal = match principal {
        Ok(p) => p,
        Err(why) => {
            let response = ApiError::Unauthorized(why).into_response();
            if mutation || (mcp && method == Method::POST) {
                // Named by its route, not its path: the path is the caller's to make long.
                let route = if mcp {
                    "/mcp".to_string()
                } else {
                    request
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or_else(|| "/v1/...".to_string(), |m| m.as_str().to_string())
                };
                state
                    .service
                    .audit_refusal(None, &format!("{method} {route}"), "-", 401, why);
            }
            return response;
        }
    };
    let mark = AuditMark::default();
    request.extensions_mut().insert(principal.clone());
    request.extensions_mut().insert(mark.clone());
    let response = next.run(request).await;
    if mcp && !response.status().is_success() {
        let status = response.status();
        state.service.audit_refusal(
            Some(&principal),
            &format!("{method} /mcp"),
            "-",
            status.as_u16(),
            status.canonical_reason().unwrap_or("refused"),
        );
    }
    if mutation && !mark.audited() {
        let (verb, agent) = named(&method, &path);
        let reason = response
            .extensions()
            .get::<AuditReason>()
            .map_or("", |r| r.0.as_str());
        state.service.audit_refusal(
            Some(&principal),
            &verb,
            &agent,
            response.status().as_u16(),
            reason,
        );
    }
    response
}

/// What a mutation refused before the service is called, by its path.
fn named(method: &Method, path: &str) -> (String, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::POST, ["v1", "agents"]) => ("create".into(), "-".into()),
        (&Method::PUT, ["v1", "agents", name]) => ("apply".into(), name.to_string()),
        (&Method::DELETE, ["v1", "agents", name]) => ("delete".into(), name.to_string()),
        (&Method::POST, ["v1", "agents", name, "action"]) => ("action".into(), name.to_string()),
        (&Method::POST, ["v1", "apply"]) => ("apply".into(), "-".into()),
        (&Method::PUT, ["v1", "secrets", name]) => ("write secret".into(), name.to_string()),
        (&Method::DELETE, ["v1", "secrets", name]) => ("delete secret".into(), name.to_string()),
        _ => (format!("{method} {path}"), "-".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_credential_is_read() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(presented(&h), Ok("abc"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "abc".parse().unwrap());
        assert_eq!(presented(&h), Ok("abc"));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(presented(&h).is_err());
        let mut h = HeaderMap::new();
        h.append("authorization", "Bearer a".parse().unwrap());
        h.append("authorization", "Bearer b".parse().unwrap());
        assert!(presented(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer a".parse().unwrap());
        h.insert("x-api-key", "a".parse().unwrap());
        assert!(presented(&h).is_err());
        assert!(presented(&HeaderMap::new()).is_err());
    }
}
