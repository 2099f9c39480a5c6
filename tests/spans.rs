//! Log lines of a server's connection carry its span: the agent's name
//! and the connection id.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;

/// Collects everything written to it.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

// One thread: the server's and the client's tasks all log to the
// subscriber set for it.
#[tokio::test(flavor = "current_thread")]
async fn connection_lines_carry_the_name_and_connection_id() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = start_server().await;
    let client = connect(&server, client_builder(&server).name("spanned")).await;
    let conn = server.agent("spanned").expect("connected").connection_id();
    client.close().await;
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let connected = text
        .lines()
        .find(|l| l.contains("agent connected"))
        .unwrap_or_else(|| panic!("no 'agent connected' line in\n{text}"));
    assert!(connected.contains("name=\"spanned\""), "{connected}");
    assert!(connected.contains(&format!("conn={conn}")), "{connected}");
}
