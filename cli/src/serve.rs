//! `agent-tunnel serve`: a server and its HTTP API until SIGTERM or Ctrl-C,
//! then a graceful shutdown of both.

use std::path::Path;

use crate::{config, exit, init_logging, LogFormat};

pub async fn run(path: &Path, format: LogFormat) -> u8 {
    init_logging(format);
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let server = match loaded.builder.start(loaded.config.listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot start the server on {}: {e}",
                loaded.config.listen
            );
            return exit::USAGE;
        }
    };
    let scheme = if loaded.config.tls.is_some() {
        "wss"
    } else {
        "ws"
    };
    // On stdout, for scripts and tests that bind port 0.
    println!("agents: {scheme}://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut api = None;
    if let (Some(admin), Some(cfg)) = (loaded.admin, &loaded.config.admin) {
        let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: admin.listen: cannot bind {}: {e}", cfg.listen);
                server.shutdown().await;
                return exit::USAGE;
            }
        };
        if let Ok(addr) = listener.local_addr() {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the admin API listens beyond this machine: put TLS in front of it");
            }
            println!("api: http://{addr}");
            tracing::info!(%addr, "admin API listening");
        }
        let app = agent_tunnel_admin::router(server.clone(), admin);
        api = Some(tokio::spawn(agent_tunnel_admin::serve(
            listener,
            app,
            async move {
                let _ = stopped.await;
            },
        )));
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    // The API answers until the server is down (/readyz says 503 meanwhile).
    server.shutdown().await;
    let _ = stop.send(());
    if let Some(api) = api {
        let _ = api.await;
    }
    exit::OK
}

pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
