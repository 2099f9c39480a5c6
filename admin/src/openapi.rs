//! The OpenAPI 3.1 description served at `/v1/openapi.json`, generated
//! from the handlers' annotations by `utoipa` so it follows the code.

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// An error answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorBody {
    error: ErrorObject,
}

/// The error itself.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorObject {
    /// The stable code (see the README's table of statuses).
    code: String,
    /// What went wrong, for a human.
    message: String,
    /// True when the agent itself answered with this error.
    remote: Option<bool>,
    /// The data of an agent's error.
    data: Option<Value>,
}

/// One connected agent.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AgentView {
    name: String,
    connection_id: u64,
    peer_addr: String,
    tls: bool,
    first_time: bool,
    /// Unix time in milliseconds.
    connected_at_ms: u64,
    /// The agent's labels, key to value.
    labels: Value,
    meta: Value,
}

/// A page of agents.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AgentPage {
    agents: Vec<AgentView>,
    /// Pass as `after` for the next page; null on the last.
    next: Option<String>,
}

/// One agent's outcome in a call to many: `ok` (or `sent` for a
/// notification) or `error`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AgentResult {
    agent: String,
    ok: Option<Value>,
    sent: Option<bool>,
    error: Option<ErrorObject>,
}

/// The outcomes of a call to many agents.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Results {
    results: Vec<AgentResult>,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "agent-tunnel admin API", description = "List, call, notify and manage the agents of an agent-tunnel server."),
    paths(
        crate::routes::healthz,
        crate::routes::readyz,
        crate::routes::info,
        crate::routes::stats,
        crate::routes::metrics,
        crate::routes::list_agents,
        crate::routes::show_agent,
        crate::routes::call_agent,
        crate::routes::call_many,
        crate::routes::notify_agent,
        crate::routes::notify_many,
        crate::routes::disconnect,
        crate::routes::revoke,
        crate::routes::unrevoke,
        crate::routes::openapi_json,
    ),
    components(schemas(ErrorBody, ErrorObject, AgentView, AgentPage, AgentResult, Results)),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
pub(crate) struct ApiDoc;
