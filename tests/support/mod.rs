//! Test support for the lifecycle, TLS and signed-frame suites: a TCP proxy
//! that can cut or freeze connections, test certificates, and event waits.
#![allow(dead_code)]

pub mod certs;
pub mod proxy;
pub mod raw;

use std::time::Duration;

use tokio::sync::broadcast;

/// Generous bound for anything that should happen "soon" on a loaded machine.
pub const SOON: Duration = Duration::from_secs(20);

/// Waits for the first event matching `pick`, skipping others, within `SOON`.
pub async fn wait_for<E: Clone, T>(
    rx: &mut broadcast::Receiver<E>,
    what: &str,
    mut pick: impl FnMut(&E) -> Option<T>,
) -> T {
    let fut = async {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    panic!("event channel closed while waiting for {what}")
                }
            }
        }
    };
    match tokio::time::timeout(SOON, fut).await {
        Ok(t) => t,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Awaits `fut` within `SOON`, or fails the test naming `what`.
pub async fn soon<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(SOON, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}
