//! End to end: `agent-tunnel serve` from a temporary config, two
//! `agent-tunnel agent` processes, and the operator commands against them,
//! asserting on output and exit codes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_agent-tunnel");
const LIMIT: Duration = Duration::from_secs(30);

/// A child process killed when the test ends, however it ends.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        Proc::spawn_logging(cmd, Stdio::null())
    }

    /// Like `spawn`, with stderr (the log) going to `stderr`.
    fn spawn_logging(cmd: &mut Command, stderr: Stdio) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn agent-tunnel");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The next stdout line starting with `prefix`, the rest of it.
    fn line(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(LIMIT)
                .unwrap_or_else(|_| panic!("no line starting {prefix:?} within {LIMIT:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Fleet {
    dir: tempfile::TempDir,
    server: Proc,
    api: String,
    ws: String,
    agents: Vec<Proc>,
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn fleet(agents: &[(&str, &str)]) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "secret.txt", "cli-test-secret\n");
    write(dir.path(), "token.txt", "cli-test-token\n");
    write(
        dir.path(),
        "config.toml",
        r#"
listen = "127.0.0.1:0"
secret = { file = "secret.txt" }
store = "names.json"
[limits]
ping_interval_ms = 0
[admin]
listen = "127.0.0.1:0"
token = { file = "token.txt" }
"#,
    );
    // The server's log, to check that no secret reaches it.
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let server = Proc::spawn_logging(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(dir.path().join("config.toml"))
            .env("RUST_LOG", "debug"),
        Stdio::from(log),
    );
    let ws = server.line("agents: ");
    let api = server.line("api: ");
    let mut fleet = Fleet {
        dir,
        server,
        api,
        ws,
        agents: Vec::new(),
    };
    for (name, label) in agents {
        let agent = Proc::spawn(
            Command::new(BIN)
                .args([
                    "agent",
                    "--url",
                    &fleet.ws,
                    "--name",
                    name,
                    "--label",
                    label,
                    "--secret-file",
                ])
                .arg(fleet.dir.path().join("secret.txt")),
        );
        assert_eq!(agent.line("connected as "), *name);
        fleet.agents.push(agent);
    }
    fleet
}

impl Fleet {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("AGENT_TUNNEL_API", &self.api)
            .env("AGENT_TUNNEL_TOKEN_FILE", self.dir.path().join("token.txt"))
            .env_remove("AGENT_TUNNEL_TOKEN")
            .output()
            .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn operator_commands_against_a_running_fleet() {
    let f = fleet(&[("web1", "role=web"), ("db1", "role=db")]);

    let ls = f.run(&["agents", "ls"]);
    assert_eq!(ls.status.code(), Some(0), "{}", stderr(&ls));
    let out = stdout(&ls);
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("NAME"), "{out}");
    assert!(
        rows[1].starts_with("db1") && rows[1].ends_with("role=db"),
        "{out}"
    );
    assert!(
        rows[2].starts_with("web1") && rows[2].ends_with("role=web"),
        "{out}"
    );

    let show = f.run(&["agents", "show", "web1"]);
    assert_eq!(show.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    assert_eq!(v["name"], "web1");

    let ping = f.run(&["call", "web1", "ping"]);
    assert_eq!(ping.status.code(), Some(0), "{}", stderr(&ping));
    assert_eq!(stdout(&ping).trim(), "\"pong\"");

    let info = f.run(&["call", "db1", "info", "{}"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&info)).unwrap();
    assert_eq!(v["labels"]["role"], "db");
    assert!(v["host"].as_str().is_some_and(|h| !h.is_empty()));

    // Piped: one JSON line per agent.
    let all = f.run(&["call", "--all", "ping"]);
    assert_eq!(all.status.code(), Some(0), "{}", stderr(&all));
    let mut names: Vec<String> = stdout(&all)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["ok"], "pong");
            v["agent"].as_str().unwrap().to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["db1", "web1"]);
    // A selector picks the agents, listed and called.
    let web = f.run(&["agents", "ls", "-l", "role=web"]);
    assert_eq!(web.status.code(), Some(0), "{}", stderr(&web));
    let out = stdout(&web);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("web1"));
    let db = f.run(&["call", "-l", "role in (db)", "--concurrency", "1", "ping"]);
    assert_eq!(db.status.code(), Some(0), "{}", stderr(&db));
    assert_eq!(stdout(&db).trim(), r#"{"agent":"db1","ok":"pong"}"#);
    let none = f.run(&["call", "-l", "role=nothing", "ping"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        stderr(&none).contains("NO_CONNECTED_AGENTS"),
        "{}",
        stderr(&none)
    );
    let bad = f.run(&["call", "-l", "role in ()", "ping"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("BAD_REQUEST"), "{}", stderr(&bad));

    let partial = f.run(&["call", "--all", "nope"]);
    assert_eq!(partial.status.code(), Some(4));

    let missing = f.run(&["call", "nobody", "ping"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("UNKNOWN_AGENT"),
        "{}",
        stderr(&missing)
    );
    let bad = f.run(&["call", "web1", "ping", "{oops"]);
    assert_eq!(bad.status.code(), Some(2));

    let stats = f.run(&["stats"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&stats)).unwrap();
    assert_eq!(v["agents"], 2);

    let revoke = f.run(&["revoke", "db1"]);
    assert_eq!(revoke.status.code(), Some(0), "{}", stderr(&revoke));
    let gone = f.run(&["call", "db1", "ping"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("REVOKED"));
    assert_eq!(f.run(&["unrevoke", "db1"]).status.code(), Some(0));

    let kick = f.run(&["kick", "web1"]);
    assert_eq!(kick.status.code(), Some(0), "{}", stderr(&kick));

    // A wrong token and an unreachable API have their own codes.
    let wrong = Command::new(BIN)
        .args(["stats", "--api", &f.api])
        .env("AGENT_TUNNEL_TOKEN", "wrong")
        .env_remove("AGENT_TUNNEL_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(stderr(&wrong).contains("UNAUTHORIZED"));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = f.run(&["stats", "--api", &dead]);
    assert_eq!(unreachable.status.code(), Some(3));
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let mut f = fleet(&[("a1", "k=v")]);
    let pid = f.server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (tx, rx) = mpsc::channel();
    let mut child = std::mem::replace(&mut f.server.child, Command::new("true").spawn().unwrap());
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx
        .recv_timeout(LIMIT)
        .expect("serve exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn config_check_and_example() {
    let example = Command::new(BIN)
        .args(["config", "example"])
        .output()
        .unwrap();
    assert_eq!(example.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "agent-tunnel.toml", &stdout(&example));
    write(dir.path(), "secret.txt", "s3cret");
    let check = |file: &str| {
        Command::new(BIN)
            .args(["config", "check"])
            .arg(dir.path().join(file))
            .env("AGENT_TUNNEL_SECRET", "s3cret")
            .env("AGENT_TUNNEL_ADMIN_TOKEN", "t0ken")
            .output()
            .unwrap()
    };
    let ok = check("agent-tunnel.toml");
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));

    write(
        dir.path(),
        "typo.toml",
        "listen = \"127.0.0.1:0\"\nsecret = { file = \"secret.txt\" }\nlisen = 1\n",
    );
    let typo = check("typo.toml");
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        stderr(&typo).contains("line 3") && stderr(&typo).contains("lisen"),
        "{}",
        stderr(&typo)
    );

    write(
        dir.path(),
        "nosecret.toml",
        "secret = { env = \"AGENT_TUNNEL_TEST_UNSET_VAR\" }\n",
    );
    let nosecret = check("nosecret.toml");
    assert_eq!(nosecret.status.code(), Some(2));
    assert!(
        stderr(&nosecret).contains("secret.env"),
        "{}",
        stderr(&nosecret)
    );

    write(
        dir.path(),
        "format.toml",
        "secret = { file = \"secret.txt\" }\nname_format = \"\"\n",
    );
    let format = check("format.toml");
    assert_eq!(format.status.code(), Some(2));
    assert!(
        stderr(&format).contains("name_format"),
        "{}",
        stderr(&format)
    );

    // The secret itself never appears in what the binary prints.
    assert!(!stdout(&ok).contains("s3cret") && !stderr(&ok).contains("s3cret"));
}

#[test]
fn completions_are_generated() {
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("agent-tunnel"));
}
