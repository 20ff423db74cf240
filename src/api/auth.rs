//! The /v1 middleware: authenticates the caller's key (see [`crate::access`]), hands the
//! [`Principal`] to the handlers, and records every mutation, accepted or refused, in the
//! audit log and in the logs. Keys are never logged; a key's id is.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::info;

use super::error::{clip, ApiError, AuditReason};
use super::AppState;
use crate::access::Principal;
use crate::agent::now_rfc3339;
use crate::store::AuditEntry;

/// Set by a handler on its response: what the audit entry should name.
#[derive(Clone, Debug)]
pub struct AuditNote {
    pub verb: &'static str,
    pub agent: String,
}

/// The key a request presents: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
/// More than one credential header is refused rather than guessed between.
fn presented(headers: &HeaderMap) -> Result<&str, &'static str> {
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

/// Middleware: refuse any request without a valid key; audit every mutation.
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
    let mutation = matches!(
        method,
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    );
    let principal = presented(request.headers())
        .and_then(|key| state.keys.authenticate(key).ok_or("invalid API key"));
    let principal = match principal {
        Ok(p) => p,
        Err(why) => {
            let response = ApiError::Unauthorized(why).into_response();
            if mutation {
                // Named by its route, not its path: the path is the caller's to make long.
                let route = request
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or_else(|| "/v1/...".to_string(), |m| format!("/v1{}", m.as_str()));
                audit(&state, None, &method, &route, &response);
            }
            return response;
        }
    };
    request.extensions_mut().insert(principal.clone());
    // A standby stores nothing: what it stored would not be what runs.
    let standby = mutation.then(|| state.standby_reason()).flatten();
    let response = match standby {
        Some(reason) => ApiError::Unavailable(reason).into_response(),
        None => next.run(request).await,
    };
    if mutation {
        audit(&state, Some(&principal), &method, &path, &response);
    }
    response
}

/// Writes one audit entry (store and log). A failure to store is logged, never hidden.
fn audit(
    state: &AppState,
    who: Option<&Principal>,
    method: &Method,
    path: &str,
    response: &Response,
) {
    let note = response.extensions().get::<AuditNote>();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (verb, agent) = match (note, method, segments.as_slice()) {
        (Some(n), _, _) => (n.verb.to_string(), n.agent.clone()),
        (None, &Method::POST, ["v1", "agents"]) => ("create".into(), "-".into()),
        (None, &Method::PUT, ["v1", "agents", name]) => ("apply".into(), name.to_string()),
        (None, &Method::DELETE, ["v1", "agents", name]) => ("delete".into(), name.to_string()),
        (None, &Method::POST, ["v1", "agents", name, "action"]) => {
            ("action".into(), name.to_string())
        }
        _ => (format!("{method} {path}"), "-".into()),
    };
    let (verb, agent) = (clip(&verb, 128), clip(&agent, 63));
    let status = response.status().as_u16();
    let outcome = if status < 400 { "accepted" } else { "refused" };
    let reason = response
        .extensions()
        .get::<AuditReason>()
        .map(|r| clip(&r.0, 256));
    let entry = AuditEntry {
        id: 0,
        time: now_rfc3339(),
        key_id: who.map_or("-".into(), |p| p.key_id.clone()),
        owner: who.map_or("-".into(), |p| p.owner.clone()),
        verb,
        agent,
        outcome: outcome.into(),
        status,
        reason,
        count: 1,
    };
    let stored = match who {
        Some(_) => state.store.record_audit(entry.clone()),
        None => state.store.record_unauthenticated(entry.clone()),
    };
    match stored {
        // A flood of requests without a key is logged once a minute, as it is stored.
        Ok(e) if e.count > 1 => {}
        stored => {
            info!(
                target: "hive::audit",
                key_id = %entry.key_id, owner = %entry.owner, verb = %entry.verb, agent = %entry.agent,
                outcome = %entry.outcome, status, reason = entry.reason.as_deref().unwrap_or(""),
                "audit"
            );
            if let Err(e) = stored {
                tracing::error!(error = %e, "could not store an audit entry");
            }
        }
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
