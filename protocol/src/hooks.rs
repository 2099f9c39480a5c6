//! The hook registry: named async handlers for the actions a peer may call.
//!
//! Both sides use the same registry; only the peer handle differs (the server
//! hands its handlers the calling `Agent`, an agent hands its handlers a handle
//! to the server). The chain rules follow websocket-agent:
//!
//! * catch-all handlers ([`Hooks::on_any`]) run first, then the handlers of the
//!   action, each group in the order it was registered;
//! * the response is the last non-empty result (`null`, `()` and `None` are
//!   empty); when every result is empty the response is `null`;
//! * the first error stops the chain and reaches the caller as it is;
//! * an action with no handler at all answers `UNKNOWN_ACTION`;
//! * a body that does not deserialize as the handler's type answers
//!   `INVALID_MESSAGE`; a handler that panics answers `INTERNAL_ERROR`.
//!
//! The action is the peer's choice: where it appears in an error message or
//! a log line it is clipped to [`ACTION_CLIP`] bytes, and the log line of a
//! panic is rate-limited.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::body::{Body, BodyRef};
use crate::error::{codes, HookError};
use crate::link::serving::CallCtl;
use crate::log_limit::{clip, LogLimit};

/// Longest part of an action name quoted in an error message or a log line.
pub const ACTION_CLIP: usize = 64;
/// Longest part of a body's decode error quoted back to the caller.
const DECODE_CLIP: usize = 200;

/// What a handler learns about the call besides its body.
///
/// Besides the action and the peer, it tells whether the call is a
/// notification ([`Call::is_notification`]), and lets a hook see the
/// caller's cancel ([`Call::cancelled`], [`Call::is_cancelled`]) and opt
/// out of being dropped by it ([`Call::keep_running`]).
#[derive(Debug, Clone)]
pub struct Call<P> {
    /// The action the caller asked for.
    pub action: Arc<str>,
    /// The calling peer: the `Agent` on the server, the server link on an agent.
    pub peer: P,
    ctl: CallCtl,
    from: Option<Arc<str>>,
}

impl<P> Call<P> {
    /// A call made outside any link, as [`Hooks::dispatch`] makes: it is
    /// never cancelled. For tests of handlers.
    pub fn detached(action: &str, peer: P) -> Self {
        Call {
            action: Arc::from(action),
            peer,
            ctl: CallCtl::Detached,
            from: None,
        }
    }

    /// The name of the agent that made this call through the server's relay
    /// (`AgentClient::send_to_agent`), as the server vouches for it; `None`
    /// for a call the peer made itself. Only an agent's hooks see a name
    /// here: the server never relays to itself.
    ///
    /// ```no_run
    /// # use agent_protocol::{Hooks, HookError};
    /// # let hooks: Hooks<()> = Hooks::new();
    /// hooks.on_hook("whoami", |_: (), call| async move {
    ///     Ok::<_, HookError>(call.relayed_from().map(str::to_owned))
    /// });
    /// ```
    pub fn relayed_from(&self) -> Option<&str> {
        self.from.as_deref()
    }

    /// True for a notification (`note`): nobody waits for the result, which
    /// is discarded; an error is only logged on this side. A notification
    /// has no id and cannot be cancelled.
    pub fn is_notification(&self) -> bool {
        self.ctl.is_note()
    }

    /// True once the caller cancelled this request (it sent `cancel`). By
    /// default a cancelled hook's future is dropped, so a hook only sees
    /// this after [`Call::keep_running`], or in a task it spawned. Only
    /// meaningful while the request is served: a `Call` kept after its
    /// request ended reads `false`.
    pub fn is_cancelled(&self) -> bool {
        self.ctl.is_cancelled()
    }

    /// Resolves when the caller cancels this request; never, for a
    /// notification, a call outside a link, or a request that has ended.
    /// The future is `'static`: hand it to work the hook spawns, so that
    /// work stops with the call.
    ///
    /// ```no_run
    /// # use agent_protocol::{Hooks, HookError};
    /// # let hooks: Hooks<()> = Hooks::new();
    /// hooks.on_hook("tail", |path: String, call| async move {
    ///     // Run until the caller gives up, then clean up and say so.
    ///     call.keep_running();
    ///     let stopped = call.cancelled();
    ///     tokio::select! {
    ///         _ = stopped => Ok::<_, HookError>(format!("stopped tailing {path}")),
    ///         _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => Ok("done".into()),
    ///     }
    /// });
    /// ```
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        let token = self.ctl.token();
        async move {
            match token {
                Some(token) => token.cancelled_owned().await,
                None => std::future::pending().await,
            }
        }
    }

    /// Opts this request out of being dropped by the caller's cancel: the
    /// hook runs on, sees [`Call::is_cancelled`] turn true (and
    /// [`Call::cancelled`] resolve), and its own result is the request's
    /// answer. For work that must not stop half-way; it may still finish
    /// early on its own. The request's timeout and the link's end still
    /// drop it: work that must outlive the link belongs on a task of its
    /// own. Call it before the point of no return; a cancel that came
    /// earlier has dropped the hook already.
    pub fn keep_running(&self) {
        self.ctl.keep_running();
    }

    /// True when the caller takes a streamed result (it called
    /// `call_stream` / `send_streaming`): items sent through
    /// [`Call::stream`] and progress reach it.
    pub fn is_streaming(&self) -> bool {
        self.ctl.outlet().is_some()
    }

    /// Reports progress to a caller that takes a streamed result, as one
    /// `prog` frame: fire-and-forget. Returns false when nothing was sent:
    /// the caller made a plain call (progress is dropped for those), the
    /// link's queue is full (progress is dropped rather than waited for;
    /// the caller also keeps only the latest value it has not yet
    /// yielded), the value does not serialize, or the request has ended.
    ///
    /// ```no_run
    /// # use agent_protocol::{Hooks, HookError};
    /// # let hooks: Hooks<()> = Hooks::new();
    /// hooks.on_hook("build", |_: (), call| async move {
    ///     for pct in [0, 50, 100] {
    ///         call.progress(&serde_json::json!({ "pct": pct }));
    ///     }
    ///     Ok::<_, HookError>("built")
    /// });
    /// ```
    pub fn progress<T: serde::Serialize + ?Sized>(&self, value: &T) -> bool {
        crate::link::stream::progress(self.ctl.outlet(), value)
    }

    /// The sink for the items of this call's streamed result, each of type
    /// `T` (see [`ItemSink`](crate::ItemSink)). For a caller that made a
    /// plain call the sink discards items, and that caller gets only the
    /// final result.
    pub fn stream<T: serde::Serialize + ?Sized>(&self) -> crate::ItemSink<T> {
        crate::ItemSink::new(self.ctl.outlet().cloned())
    }
}

/// The result of one handler: `Ok(None)` is an empty result.
pub type HandlerResult = Result<Option<Body>, HookError>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

// The body is parsed before the future is built, so a borrow is enough.
type ErasedFn<P> = dyn Fn(BodyRef<'_>, Call<P>) -> BoxFuture<HandlerResult> + Send + Sync;

/// A handler with its types erased, as stored in the registry.
pub struct Handler<P>(Arc<ErasedFn<P>>);

impl<P> Clone for Handler<P> {
    fn clone(&self) -> Self {
        Handler(Arc::clone(&self.0))
    }
}

impl<P> std::fmt::Debug for Handler<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler")
    }
}

/// Wraps an async function into a [`Handler`], for [`Hooks::on_hooks`].
///
/// The function takes the deserialized body and the [`Call`], and returns the
/// response or a [`HookError`]. Use `serde_json::Value` for untyped bodies.
///
/// A response that serializes as bytes ([`Bytes`](crate::Bytes)) goes back
/// in a binary frame to a peer that takes them; a body type of `Bytes`
/// reads a binary body without parsing it (see [`crate::body`]).
pub fn handler<P, T, R, F, Fut>(f: F) -> Handler<P>
where
    P: Send + 'static,
    T: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(T, Call<P>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HookError>> + Send + 'static,
{
    let f = Arc::new(f);
    Handler(Arc::new(move |body: BodyRef<'_>, call: Call<P>| {
        let parsed = body.decode::<T>();
        let f = Arc::clone(&f);
        Box::pin(async move {
            let req = parsed.map_err(|e| {
                HookError::invalid_message(format!(
                    "body of {:?}: {}",
                    clip(&call.action, ACTION_CLIP),
                    clip(&e.to_string(), DECODE_CLIP)
                ))
            })?;
            let res = f(req, call).await?;
            let body = Body::encode(&res)
                .map_err(|e| HookError::internal(format!("response failed to serialize: {e}")))?;
            Ok((!body.is_null()).then_some(body))
        }) as BoxFuture<HandlerResult>
    }))
}

struct Registry<P> {
    any: Arc<[Handler<P>]>,
    by_action: HashMap<Arc<str>, Arc<[Handler<P>]>>,
    /// Actions the library itself serves (the server's relay): one handler
    /// each, run alone, before and instead of any catch-all or user hook.
    reserved: HashMap<Arc<str>, Handler<P>>,
}

/// The registry of handlers, cheap to clone (clones share it). Handlers may be
/// added at any time; a call in progress keeps the chain it started with.
pub struct Hooks<P> {
    inner: Arc<RwLock<Registry<P>>>,
}

impl<P> Clone for Hooks<P> {
    fn clone(&self) -> Self {
        Hooks {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P> Default for Hooks<P> {
    fn default() -> Self {
        Hooks {
            inner: Arc::new(RwLock::new(Registry {
                any: Arc::from(Vec::new()),
                by_action: HashMap::new(),
                reserved: HashMap::new(),
            })),
        }
    }
}

impl<P> std::fmt::Debug for Hooks<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reg = self.inner.read();
        let mut actions: Vec<&str> = reg.by_action.keys().map(|a| &**a).collect();
        actions.sort_unstable();
        f.debug_struct("Hooks")
            .field("catch_all", &reg.any.len())
            .field("actions", &actions)
            .finish()
    }
}

fn appended<P>(list: &[Handler<P>], h: Handler<P>) -> Arc<[Handler<P>]> {
    let mut v: Vec<Handler<P>> = list.to_vec();
    v.push(h);
    Arc::from(v)
}

impl<P: Clone + Send + 'static> Hooks<P> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a handler for `action` after any it already has.
    pub fn on_hook<T, R, F, Fut>(&self, action: &str, f: F) -> &Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(T, Call<P>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HookError>> + Send + 'static,
    {
        self.add(action, handler(f))
    }

    /// Adds several handlers at once, each for its action, in order.
    pub fn on_hooks<'a>(&self, hooks: impl IntoIterator<Item = (&'a str, Handler<P>)>) -> &Self {
        for (action, h) in hooks {
            self.add(action, h);
        }
        self
    }

    /// Adds a catch-all handler: it runs for every action, before the
    /// action's own handlers; [`Call::action`] names the action.
    ///
    /// A catch-all also answers actions that have no handler of their own:
    /// its result is then the response (`null` when it returns `()`), so
    /// with a catch-all registered no call gets `UNKNOWN_ACTION`. A
    /// catch-all that serves only some actions should return
    /// `HookError::new("UNKNOWN_ACTION", …)` for the rest.
    pub fn on_any<T, R, F, Fut>(&self, f: F) -> &Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(T, Call<P>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HookError>> + Send + 'static,
    {
        let h = handler(f);
        let mut reg = self.inner.write();
        reg.any = appended(&reg.any, h);
        self
    }

    /// Adds an erased handler for `action`.
    ///
    /// # Panics
    ///
    /// When `action` is not a valid action name
    /// ([`is_valid_action`](crate::name::is_valid_action)): no request could
    /// ever reach the handler, so the mistake is reported where it is made.
    /// The same holds for [`Hooks::on_hook`] and [`Hooks::on_hooks`].
    pub fn add(&self, action: &str, h: Handler<P>) -> &Self {
        assert!(
            crate::name::is_valid_action(action),
            "{}",
            crate::name::invalid_action(action)
        );
        let mut reg = self.inner.write();
        let list = match reg.by_action.get(action) {
            Some(list) => appended(list, h),
            None => Arc::from(vec![h]),
        };
        reg.by_action.insert(Arc::from(action), list);
        self
    }

    /// Makes `h` the only handler of `action`: it runs alone, before and
    /// instead of every catch-all and every handler added for `action`. For
    /// the actions the library serves itself (the server's relay), whose
    /// names user hooks should not use.
    #[doc(hidden)]
    pub fn reserve(&self, action: &str, h: Handler<P>) -> &Self {
        self.inner.write().reserved.insert(Arc::from(action), h);
        self
    }

    /// Runs the chain for `action` and returns the response body or the error.
    /// The handlers see a [`Call::detached`] call.
    pub async fn dispatch(
        &self,
        action: &str,
        body: Box<RawValue>,
        peer: P,
    ) -> Result<Box<RawValue>, HookError> {
        self.start(action, &body, peer).await.map(Body::into_json)
    }

    /// Starts the chain for `action`. The first handler reads the body at
    /// once, so a borrow is enough: with a single handler, the common case,
    /// nothing of the request is copied. The handlers see a
    /// [`Call::detached`] call.
    pub fn start(&self, action: &str, body: &RawValue, peer: P) -> Dispatch {
        self.start_with(action, BodyRef::Json(body), peer, CallCtl::Detached, None)
    }

    /// [`Hooks::start`] for a link: the handlers' calls carry `ctl`.
    pub(crate) fn start_with(
        &self,
        action: &str,
        body: BodyRef<'_>,
        peer: P,
        ctl: CallCtl,
        from: Option<&str>,
    ) -> Dispatch {
        let from: Option<Arc<str>> = from.map(Arc::from);
        let (any, own, action) = {
            let reg = self.inner.read();
            if let Some((name, only)) = reg.reserved.get_key_value(action) {
                let action = Arc::clone(name);
                let only = only.clone();
                drop(reg);
                let call = Call {
                    action: Arc::clone(&action),
                    peer,
                    ctl,
                    from,
                };
                let state =
                    match std::panic::catch_unwind(AssertUnwindSafe(|| (only.0)(body, call))) {
                        Ok(fut) => DispatchState::One { fut, action },
                        Err(_) => DispatchState::Done(Some(Err(panicked(&action)))),
                    };
                return Dispatch { state };
            }
            let own = reg.by_action.get_key_value(action);
            let name = own
                .map(|(k, _)| Arc::clone(k))
                .unwrap_or_else(|| Arc::from(action));
            (Arc::clone(&reg.any), own.map(|(_, v)| Arc::clone(v)), name)
        };
        let own: Arc<[Handler<P>]> = own.unwrap_or_else(|| Arc::from(Vec::new()));
        let state = match (&any[..], &own[..]) {
            ([], []) => DispatchState::Done(Some(Err(HookError::new(
                codes::UNKNOWN_ACTION,
                format!("no hook for action {:?}", clip(&action, ACTION_CLIP)),
            )))),
            ([only], []) | ([], [only]) => {
                let call = Call {
                    action: Arc::clone(&action),
                    peer,
                    ctl,
                    from,
                };
                match std::panic::catch_unwind(AssertUnwindSafe(|| (only.0)(body, call))) {
                    Ok(fut) => DispatchState::One { fut, action },
                    Err(_) => DispatchState::Done(Some(Err(panicked(&action)))),
                }
            }
            _ => {
                let body = body.to_body();
                DispatchState::Chain(Box::pin(chain(any, own, action, body, peer, ctl, from)))
            }
        };
        Dispatch { state }
    }
}

/// Runs several handlers in order: the last non-empty result answers, the
/// first error stops the chain.
async fn chain<P: Clone + Send + 'static>(
    any: Arc<[Handler<P>]>,
    own: Arc<[Handler<P>]>,
    action: Arc<str>,
    body: Body,
    peer: P,
    ctl: CallCtl,
    from: Option<Arc<str>>,
) -> Result<Body, HookError> {
    let mut last: Option<Body> = None;
    for h in any.iter().chain(own.iter()) {
        let call = Call {
            action: Arc::clone(&action),
            peer: peer.clone(),
            ctl: ctl.clone(),
            from: from.clone(),
        };
        let fut = AssertUnwindSafe(|| (h.0)(body.as_ref(), call));
        let outcome = match std::panic::catch_unwind(fut) {
            Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
            Err(panic) => Err(panic),
        };
        match outcome {
            Ok(Ok(Some(v))) => last = Some(v),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(panicked(&action)),
        }
    }
    Ok(last.unwrap_or_else(Body::null))
}

fn panicked(action: &str) -> HookError {
    // A peer can make a buggy hook panic at will.
    static PANICS: LogLimit = LogLimit::per_second(5);
    let action = clip(action, ACTION_CLIP);
    if let Some(suppressed) = PANICS.allow() {
        tracing::error!(action = %action, suppressed, "hook panicked");
    }
    HookError::new(
        codes::INTERNAL_ERROR,
        format!("hook for {action:?} panicked"),
    )
}

/// One request's run through its handler chain (see [`Hooks::start`]):
/// resolves to the response body or the error. A panicking handler gives
/// `INTERNAL_ERROR`.
pub struct Dispatch {
    state: DispatchState,
}

enum DispatchState {
    Done(Option<Result<Body, HookError>>),
    /// The only handler, polled as it is.
    One {
        fut: BoxFuture<HandlerResult>,
        action: Arc<str>,
    },
    Chain(BoxFuture<Result<Body, HookError>>),
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            DispatchState::Done(_) => "done",
            DispatchState::One { .. } => "one handler",
            DispatchState::Chain(_) => "chain",
        };
        f.debug_struct("Dispatch").field("state", &state).finish()
    }
}

impl Future for Dispatch {
    type Output = Result<Body, HookError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match &mut self.state {
            DispatchState::Done(result) => result
                .take()
                .unwrap_or_else(|| Err(HookError::internal("dispatch polled after it finished"))),
            DispatchState::One { fut, action } => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(Ok(Some(v)))) => Ok(v),
                    Ok(Poll::Ready(Ok(None))) => Ok(Body::null()),
                    Ok(Poll::Ready(Err(e))) => Err(e),
                    Err(_) => Err(panicked(action)),
                }
            }
            DispatchState::Chain(fut) => match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result,
            },
        };
        self.state = DispatchState::Done(None);
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn raw(v: Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }

    #[tokio::test]
    async fn chain_order_last_non_empty_and_first_error() {
        let hooks: Hooks<()> = Hooks::new();
        let log = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
        let l = log.clone();
        hooks.on_hook("a", move |_: Value, _| {
            let l = l.clone();
            async move {
                l.lock().push("a1".into());
                Ok(json!(1))
            }
        });
        let l = log.clone();
        hooks.on_any(move |_: Value, c: Call<()>| {
            let l = l.clone();
            async move {
                l.lock().push(format!("any:{}", c.action));
                Ok(())
            }
        });
        let l = log.clone();
        hooks.on_hook("a", move |_: Value, _| {
            let l = l.clone();
            async move {
                l.lock().push("a2".into());
                Ok(Value::Null)
            }
        });
        let out = hooks.dispatch("a", raw(json!({})), ()).await.unwrap();
        assert_eq!(out.get(), "1");
        assert_eq!(*log.lock(), ["any:a", "a1", "a2"]);

        hooks.on_hook("b", |_: Value, _| async {
            Err::<(), _>(HookError::new("E1", "first"))
        });
        hooks.on_hook("b", |_: Value, _| async { Ok(json!("never")) });
        let err = hooks.dispatch("b", raw(json!(null)), ()).await.unwrap_err();
        assert_eq!(err.code, "E1");
    }

    /// A body type whose deserializer panics: the handler panics before its
    /// future exists.
    struct Bomb;
    impl<'de> serde::Deserialize<'de> for Bomb {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            panic!("deserializer bug")
        }
    }

    #[tokio::test]
    async fn a_panic_while_reading_the_body_is_an_internal_error() {
        let hooks: Hooks<()> = Hooks::new();
        hooks.on_hook("bomb", |_: Bomb, _| async { Ok(()) });
        let err = hooks.dispatch("bomb", raw(json!(1)), ()).await.unwrap_err();
        assert_eq!(err.code, codes::INTERNAL_ERROR);
        // The same in a chain of several handlers.
        hooks.on_any(|_: Value, _| async { Ok(()) });
        let err = hooks.dispatch("bomb", raw(json!(1)), ()).await.unwrap_err();
        assert_eq!(err.code, codes::INTERNAL_ERROR);
    }

    #[test]
    #[should_panic(expected = "invalid action name")]
    fn a_hook_for_an_invalid_action_name_is_refused_where_it_is_added() {
        let hooks: Hooks<()> = Hooks::new();
        hooks.on_hook("has space", |_: Value, _| async { Ok(()) });
    }

    #[tokio::test]
    async fn a_long_action_is_clipped_in_error_messages() {
        let action = "a".repeat(10 * 1024);
        let hooks: Hooks<()> = Hooks::new();
        let unknown = hooks
            .dispatch(&action, raw(json!(null)), ())
            .await
            .unwrap_err();
        assert_eq!(unknown.code, codes::UNKNOWN_ACTION);
        assert!(unknown.message.len() < 200, "{}", unknown.message.len());

        // Such an action cannot be registered (or sent over a link); a
        // catch-all still sees it when dispatched directly.
        hooks.on_any(|_: Value, _| async move {
            if true {
                panic!("handler bug");
            }
            Ok(())
        });
        let panicked = hooks
            .dispatch(&action, raw(json!(null)), ())
            .await
            .unwrap_err();
        assert_eq!(panicked.code, codes::INTERNAL_ERROR);
        assert!(panicked.message.len() < 200, "{}", panicked.message.len());

        #[derive(Debug, serde::Deserialize)]
        struct Typed {
            _n: u32,
        }
        let typed = "t".repeat(10 * 1024);
        let hooks: Hooks<()> = Hooks::new();
        hooks.on_any(|_: Typed, _| async { Ok(()) });
        let huge = raw(json!({ "x".repeat(10 * 1024): 1 }));
        let invalid = hooks.dispatch(&typed, huge, ()).await.unwrap_err();
        assert_eq!(invalid.code, codes::INVALID_MESSAGE);
        assert!(invalid.message.len() < 400, "{}", invalid.message.len());
    }

    #[test]
    fn the_panic_error_of_a_long_action_is_short() {
        let err = panicked(&"x".repeat(10 * 1024));
        assert_eq!(err.code, codes::INTERNAL_ERROR);
        assert!(err.message.len() <= ACTION_CLIP + 40, "{}", err.message);
    }

    #[tokio::test]
    async fn unknown_action_invalid_body_and_panic() {
        let hooks: Hooks<()> = Hooks::new();
        assert_eq!(
            hooks
                .dispatch("x", raw(json!(1)), ())
                .await
                .unwrap_err()
                .code,
            codes::UNKNOWN_ACTION
        );
        #[derive(serde::Deserialize)]
        struct Req {
            n: u32,
        }
        hooks.on_hook("typed", |r: Req, _| async move { Ok(r.n * 2) });
        assert_eq!(
            hooks
                .dispatch("typed", raw(json!({"n": 21})), ())
                .await
                .unwrap()
                .get(),
            "42"
        );
        assert_eq!(
            hooks
                .dispatch("typed", raw(json!({"n": "x"})), ())
                .await
                .unwrap_err()
                .code,
            codes::INVALID_MESSAGE
        );
        hooks.on_hook("boom", |_: Value, _| async move {
            if true {
                panic!("handler bug");
            }
            Ok(())
        });
        assert_eq!(
            hooks
                .dispatch("boom", raw(json!(null)), ())
                .await
                .unwrap_err()
                .code,
            codes::INTERNAL_ERROR
        );
    }
}
