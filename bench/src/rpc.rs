//! Baseline: jsonrpsee, the peer a Rust user would pick. A server with one
//! method that parses its parameter into the typed body and returns it, and
//! the jsonrpsee WebSocket client.

use std::net::SocketAddr;

use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::ArrayParams;
use jsonrpsee::server::{Server, ServerConfig, ServerHandle};
use jsonrpsee::ws_client::{WsClient, WsClientBuilder};
use jsonrpsee::RpcModule;

use crate::common::{Body, Caller, Context, Res, SharedCaller, CALL_TIMEOUT, ECHO};

/// Starts the jsonrpsee server; connections are limited only by descriptors.
pub async fn server(bind: SocketAddr) -> Res<(ServerHandle, SocketAddr)> {
    let config = ServerConfig::builder()
        .max_connections(50_000)
        .ws_only()
        .build();
    let server = Server::builder()
        .set_config(config)
        .build(bind)
        .await
        .ctx("starting the jsonrpsee server")?;
    let addr = server.local_addr().ctx("jsonrpsee server address")?;
    let mut module = RpcModule::new(());
    module
        .register_method(ECHO, |params, _, _| params.one::<Body>())
        .ctx("registering the jsonrpsee method")?;
    Ok((server.start(module), addr))
}

pub async fn client(addr: SocketAddr) -> Res<WsClient> {
    WsClientBuilder::default()
        .request_timeout(CALL_TIMEOUT)
        .build(format!("ws://{addr}"))
        .await
        .ctx("connecting the jsonrpsee client")
}

/// Client → server calls.
pub struct RpcCaller {
    pub client: WsClient,
    pub body: Body,
}

impl RpcCaller {
    pub async fn echo(client: &WsClient, body: &Body) -> Res<()> {
        let mut params = ArrayParams::new();
        params.insert(body).ctx("jsonrpsee params")?;
        let got: Body = client.request(ECHO, params).await.ctx("jsonrpsee call")?;
        if got.id != body.id {
            return Err("jsonrpsee echo returned another body".into());
        }
        Ok(())
    }
}

impl Caller for RpcCaller {
    async fn call(&mut self) -> Res<()> {
        Self::echo(&self.client, &self.body).await
    }
}

impl SharedCaller for RpcCaller {
    async fn call(&self) -> Res<()> {
        Self::echo(&self.client, &self.body).await
    }
}
