//! Agent-to-agent calls: the server serves the reserved action
//! [`RELAY_ACTION`] itself, asks the application's relay policy
//! ([`ServerBuilder::relay_policy`](crate::ServerBuilder::relay_policy),
//! default deny) and forwards the call to the target agent with the
//! caller's name in the `req`'s `from` member.
//!
//! The relayed call is the serving hook's future: when the caller cancels
//! or drops its call, or the caller's timeout passes, that future is
//! dropped, and with it the onward call, which cancels at the target.

use std::sync::{Arc, Weak};
use std::time::Duration;

use agent_protocol::relay::{RelayRequest, RELAY_ACTION};
use agent_protocol::{codes, handler, Call, HookError, RawValue};

use crate::server::Inner;
use crate::Agent;

/// The relay policy: `(from, to, action) -> allowed`.
pub(crate) type RelayPolicy = Arc<dyn Fn(&Agent, &str, &str) -> bool + Send + Sync>;

/// Serves [`RELAY_ACTION`] on every link of the server.
pub(crate) fn install(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    inner.hooks.reserve(
        RELAY_ACTION,
        handler(move |req: RelayRequest, call: Call<Agent>| {
            let weak = weak.clone();
            async move { relay(&weak, req, &call.peer).await }
        }),
    );
}

async fn relay(
    inner: &Weak<Inner>,
    req: RelayRequest,
    from: &Agent,
) -> Result<Box<RawValue>, HookError> {
    let shutdown = || HookError::new(codes::SHUTDOWN, "the server is shutting down");
    let inner = inner.upgrade().ok_or_else(shutdown)?;
    if inner.stop.is_cancelled() {
        return Err(shutdown());
    }
    // The policy comes first: a caller it refuses learns nothing of which
    // names exist.
    let allowed = inner
        .relay_policy
        .as_ref()
        .is_some_and(|policy| policy(from, &req.to, &req.action));
    if !allowed {
        return Err(HookError::new(
            codes::FORBIDDEN,
            format!(
                "the relay policy does not allow {:?} to call {:?} on {:?}",
                from.name(),
                agent_protocol::log_limit::clip(&req.action, agent_protocol::hooks::ACTION_CLIP),
                agent_protocol::log_limit::clip(&req.to, agent_protocol::hooks::ACTION_CLIP),
            ),
        ));
    }
    let target = inner.resolve(&req.to).map_err(HookError::from)?;
    let timeout = req
        .timeout_ms
        .map_or(inner.default_timeout, Duration::from_millis);
    drop(inner);
    // The callee's answer, or its error with its own code and data, goes
    // back as it is.
    target
        .link()
        .request_relayed(from.name(), &req.action, &req.body, timeout)
        .await
        .map_err(HookError::from)
}
