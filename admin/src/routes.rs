//! The handlers, one per route; see the table in the crate's README section.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use agent_protocol::Error;
use agent_server::{Agent, Selector};
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::openapi::ErrorBody;
#[allow(unused_imports)] // Named by the path annotations only.
use crate::openapi::{AgentPage, AgentView, Results};
use crate::State;

type St = AxState<Arc<State>>;

/// Most agents one page of `GET /v1/agents` lists (and its default).
pub(crate) const MAX_PAGE: usize = 1000;

/// The media type of streamed selection results.
pub(crate) const NDJSON: &str = "application/x-ndjson";

pub(crate) fn router(state: Arc<State>) -> Router {
    let limit = state.config.max_body_bytes;
    let api = Router::new()
        .route("/v1/info", get(info))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{name}", get(show_agent))
        .route("/v1/agents/{name}/call/{action}", post(call_agent))
        .route("/v1/agents/{name}/disconnect", post(disconnect))
        .route("/v1/agents/{name}/revoke", post(revoke))
        .route("/v1/agents/{name}/unrevoke", post(unrevoke))
        .route("/v1/agents/{name}/notify/{action}", post(notify_agent))
        .route("/v1/call/{action}", post(call_many))
        .route("/v1/notify/{action}", post(notify_many))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "This description", body = Value), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    Json(crate::openapi::ApiDoc::openapi())
}

#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "The process is up", body = Value)))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", security(()), responses((status = 200, description = "Serving", body = Value), (status = 503, description = "Shutting down", body = Value)))]
pub(crate) async fn readyz(AxState(st): St) -> Response {
    if st.server.is_stopped() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "stopping" })),
        )
            .into_response()
    } else {
        Json(json!({ "status": "ready" })).into_response()
    }
}

#[utoipa::path(get, path = "/v1/info", responses((status = 200, description = "Version, listen address, uptime", body = Value), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn info(AxState(st): St) -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listen": st.server.local_addr().to_string(),
        "uptime_ms": u64::try_from(st.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "stopped": st.server.is_stopped(),
    }))
}

#[utoipa::path(get, path = "/v1/stats", responses((status = 200, description = "Counts and totals", body = Value), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn stats(AxState(st): St) -> Json<Value> {
    let s = st.server.stats();
    let c = st.server.counters();
    Json(json!({
        "agents": s.agents,
        "reserved_names": s.reserved_names,
        "handshakes": s.handshakes,
        "connections": s.connections,
        "pending_requests": s.pending_requests,
        "serving_requests": s.serving_requests,
        "running_hooks": s.running_hooks,
        "queued_bytes": s.queued_bytes,
        "handshake_failures": st.server.handshake_failure_counts(),
        "links_opened": c.links_opened,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "calls_out": c.calls_out,
        "calls_in": c.calls_in,
    }))
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn metrics(AxState(st): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&st.server),
    )
        .into_response()
}

/// One agent as the API shows it.
pub(crate) fn agent_json(a: &Agent) -> Value {
    let connected_at_ms = a
        .connected_at()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    json!({
        "name": a.name(),
        "connection_id": a.connection_id(),
        "peer_addr": a.peer_addr().to_string(),
        "tls": a.is_tls(),
        "first_time": a.first_time(),
        "connected_at_ms": connected_at_ms,
        "labels": a.labels(),
        "meta": a.meta(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Page {
    /// Agents per page (default and maximum [`MAX_PAGE`]).
    limit: Option<usize>,
    /// List the names after this one (the `next` of the previous page).
    after: Option<String>,
    /// Only the agents this selector selects (README "Fleet addressing").
    selector: Option<String>,
}

/// The agents `selector` selects (every agent when absent), or 400.
fn selection(st: &State, selector: Option<&str>) -> Result<agent_server::Selection, ApiError> {
    let selector: Selector = match selector {
        None => Selector::all(),
        Some(text) => text
            .parse()
            .map_err(|e| ApiError::bad_request(format!("selector: {e}")))?,
    };
    Ok(st.server.select(selector))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

#[utoipa::path(get, path = "/v1/agents", params(("limit" = Option<usize>, Query, description = "Agents per page, 1 to 1000 (default 1000)"), ("after" = Option<String>, Query, description = "List the names after this one"), ("selector" = Option<String>, Query, description = "Only the agents this selector selects, e.g. region=eu,role in (db,cache)")), responses((status = 200, body = AgentPage), (status = 400, description = "BAD_REQUEST", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn list_agents(
    AxState(st): St,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let page = query(q)?;
    let limit = page.limit.unwrap_or(MAX_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    // Sorted by name, so `after` is a stable cursor while agents come and go.
    let agents = selection(&st, page.selector.as_deref())?.agents();
    let rest = agents
        .iter()
        .filter(|a| page.after.as_deref().is_none_or(|after| a.name() > after));
    let mut listed: Vec<&Agent> = rest.take(limit + 1).collect();
    let next = if listed.len() > limit {
        listed.truncate(limit);
        listed.last().map(|a| a.name().to_owned())
    } else {
        None
    };
    Ok(Json(json!({
        "agents": listed.iter().map(|a| agent_json(a)).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// The connected agent `name`, or why there is none (as calls report it).
fn connected(st: &State, name: &str) -> Result<Agent, ApiError> {
    if let Some(agent) = st.server.agent(name) {
        return Ok(agent);
    }
    Err(if st.server.is_revoked(name) {
        Error::Revoked(name.to_owned())
    } else if st.server.is_known(name) {
        Error::AgentNotConnected(name.to_owned())
    } else {
        Error::UnknownAgent(name.to_owned())
    }
    .into())
}

#[utoipa::path(get, path = "/v1/agents/{name}", params(("name" = String, Path)), responses((status = 200, body = AgentView), (status = 404, description = "UNKNOWN_AGENT", body = ErrorBody), (status = 409, description = "AGENT_NOT_CONNECTED", body = ErrorBody), (status = 410, description = "REVOKED", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn show_agent(
    AxState(st): St,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let agent = connected(&st, &name)?;
    Ok(Json(agent_json(&agent)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallParams {
    /// Milliseconds to wait for each agent (default: the server's).
    timeout_ms: Option<u64>,
    /// For calls to many: only the agents this selector selects.
    selector: Option<String>,
    /// For calls to many: at most this many calls in flight at once.
    concurrency: Option<usize>,
}

/// The request body as JSON; an empty body is `null`.
fn json_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Box<RawValue>, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(e.body_text())
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RawValue::NULL.to_owned());
    }
    serde_json::from_slice(&body)
        .map_err(|e| Error::InvalidMessage(format!("request body: {e}")).into())
}

/// Calls `agent` with the server's default timeout or `timeout`.
async fn call_one(
    agent: &Agent,
    action: &str,
    body: &RawValue,
    timeout: Option<Duration>,
) -> Result<Box<RawValue>, Error> {
    match timeout {
        Some(t) => {
            agent
                .send_timeout::<_, Box<RawValue>>(action, body, t)
                .await
        }
        None => agent.send::<_, Box<RawValue>>(action, body).await,
    }
}

#[utoipa::path(post, path = "/v1/agents/{name}/call/{action}", params(("name" = String, Path), ("action" = String, Path), ("timeout_ms" = Option<u64>, Query, description = "Milliseconds to wait (default: the server's)")), request_body(content = Value, description = "Any JSON; empty is null"), responses((status = 200, description = "The agent's result", body = Value), (status = 400, description = "INVALID_MESSAGE, BAD_REQUEST", body = ErrorBody), (status = 404, description = "UNKNOWN_AGENT", body = ErrorBody), (status = 409, description = "AGENT_NOT_CONNECTED", body = ErrorBody), (status = 410, description = "REVOKED", body = ErrorBody), (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody), (status = 429, description = "BUSY", body = ErrorBody), (status = 502, description = "The agent's own error, or CONNECTION_CLOSED", body = ErrorBody), (status = 503, description = "SHUTDOWN", body = ErrorBody), (status = 504, description = "TIMEOUT", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn call_agent(
    AxState(st): St,
    Path((name, action)): Path<(String, String)>,
    q: Result<Query<CallParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let params = query(q)?;
    let body = json_body(body, st.config.max_body_bytes)?;
    let agent = connected(&st, &name)?;
    let timeout = params.timeout_ms.map(Duration::from_millis);
    let result = call_one(&agent, &action, &body, timeout).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        result.get().to_owned(),
    )
        .into_response())
}

/// One agent's result in a selection call: `{"agent", "ok"}` or
/// `{"agent", "error"}`.
fn result_json(name: &str, result: Result<Box<RawValue>, Error>) -> Value {
    match result {
        Ok(raw) => {
            let ok: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
            json!({ "agent": name, "ok": ok })
        }
        Err(e) => json!({ "agent": name, "error": ApiError::from(e).body() }),
    }
}

#[utoipa::path(post, path = "/v1/call/{action}", params(("action" = String, Path), ("timeout_ms" = Option<u64>, Query, description = "Milliseconds each agent gets"), ("selector" = Option<String>, Query, description = "Only the agents this selector selects (default: every agent)"), ("concurrency" = Option<usize>, Query, description = "At most this many calls in flight at once")), request_body(content = Value), responses((status = 200, description = "Per-agent results; with Accept: application/x-ndjson one AgentResult per line as each answers", body = Results), (status = 400, description = "BAD_REQUEST (selector)", body = ErrorBody), (status = 404, description = "NO_CONNECTED_AGENTS", body = ErrorBody), (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn call_many(
    AxState(st): St,
    Path(action): Path<String>,
    q: Result<Query<CallParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let params = query(q)?;
    let body = json_body(body, st.config.max_body_bytes)?;
    let selection = selection(&st, params.selector.as_deref())?;
    if st.server.is_stopped() {
        return Err(Error::Shutdown.into());
    }
    let mut each = selection.call_each::<_, Box<RawValue>>(&action, &*body)?;
    if each.selected() == 0 {
        // A mistyped selector is an error, as for `Selection::send_all`.
        return Err(Error::NoConnectedAgents.into());
    }
    if let Some(t) = params.timeout_ms {
        each = each.timeout(Duration::from_millis(t));
    }
    if let Some(n) = params.concurrency {
        each = each.concurrency(n);
    }
    let calls = each.map(|(name, result)| result_json(&name, result));
    let streamed = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON));
    if streamed {
        // One line per agent, written as each answers.
        let lines = calls.map(|v| {
            let mut line = v.to_string();
            line.push('\n');
            Ok::<_, std::convert::Infallible>(line)
        });
        return Ok(([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(lines)).into_response());
    }
    let mut results: Vec<Value> = calls.collect().await;
    results.sort_by(|a, b| a["agent"].as_str().cmp(&b["agent"].as_str()));
    Ok(Json(json!({ "results": results })).into_response())
}

#[utoipa::path(post, path = "/v1/agents/{name}/notify/{action}", params(("name" = String, Path), ("action" = String, Path)), request_body(content = Value), responses((status = 202, description = "Queued"), (status = 404, description = "UNKNOWN_AGENT", body = ErrorBody), (status = 501, description = "UNSUPPORTED", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn notify_agent(
    AxState(st): St,
    Path((name, action)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = json_body(body, st.config.max_body_bytes)?;
    let agent = connected(&st, &name)?;
    agent.notify(&action, &*body).await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(post, path = "/v1/notify/{action}", params(("action" = String, Path), ("selector" = Option<String>, Query, description = "Only the agents this selector selects")), request_body(content = Value), responses((status = 200, body = Results), (status = 404, description = "NO_CONNECTED_AGENTS", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn notify_many(
    AxState(st): St,
    Path(action): Path<String>,
    q: Result<Query<Select>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query(q)?;
    let body = json_body(body, st.config.max_body_bytes)?;
    let sent = selection(&st, params.selector.as_deref())?
        .notify(&action, &*body)
        .await?;
    let results: Vec<Value> = sent
        .into_iter()
        .map(|(name, r)| match r {
            Ok(()) => json!({ "agent": name, "sent": true }),
            Err(e) => json!({ "agent": name, "error": ApiError::from(e).body() }),
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Select {
    /// Only the agents this selector selects.
    selector: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Reason {
    reason: Option<String>,
}

fn reason(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
    default: &str,
) -> Result<String, ApiError> {
    let raw = json_body(body, limit)?;
    let r: Option<Reason> = serde_json::from_str(raw.get())
        .map_err(|e| Error::InvalidMessage(format!("request body: {e}")))?;
    Ok(r.and_then(|r| r.reason)
        .unwrap_or_else(|| default.to_owned()))
}

#[utoipa::path(post, path = "/v1/agents/{name}/disconnect", params(("name" = String, Path)), request_body(content = Value, description = "Optional {\"reason\": \"...\"}"), responses((status = 204, description = "Disconnected"), (status = 404, description = "UNKNOWN_AGENT", body = ErrorBody), (status = 409, description = "AGENT_NOT_CONNECTED", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn disconnect(
    AxState(st): St,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let reason = reason(
        body,
        st.config.max_body_bytes,
        "disconnected by an operator",
    )?;
    st.server.disconnect(name.as_str(), &reason)?;
    tracing::info!(agent = %name, "agent disconnected through the admin API");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/agents/{name}/revoke", params(("name" = String, Path)), request_body(content = Value, description = "Optional {\"reason\": \"...\"}"), responses((status = 204, description = "Revoked"), (status = 500, description = "STORE", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn revoke(
    AxState(st): St,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let reason = reason(body, st.config.max_body_bytes, "revoked by an operator")?;
    st.server.revoke(&name, &reason).await?;
    tracing::info!(agent = %name, "agent revoked through the admin API");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/agents/{name}/unrevoke", params(("name" = String, Path)), responses((status = 204, description = "Unrevoked"), (status = 500, description = "STORE", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody)))]
pub(crate) async fn unrevoke(
    AxState(st): St,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.server.unrevoke(&name).await?;
    tracing::info!(agent = %name, "agent unrevoked through the admin API");
    Ok(StatusCode::NO_CONTENT)
}
