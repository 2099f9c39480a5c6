//! `agent-tunnel`: run a server from a config file, run an agent, and
//! operate a fleet through the server's HTTP API.
//!
//! Exit codes: 0 success; 1 the API or an agent answered with an error;
//! 2 bad usage or an invalid config; 3 the API could not be reached;
//! 4 a call to many agents where at least one failed.

mod agent;
mod config;
mod ops;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// Exit codes (documented in `--help` and the README).
pub(crate) mod exit {
    pub const OK: u8 = 0;
    pub const API_ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const PARTIAL: u8 = 4;
}

#[derive(Parser)]
#[command(
    name = "agent-tunnel",
    version,
    about = "Run an agent-tunnel server or agent, and operate a fleet over the HTTP API",
    after_help = "Exit codes: 0 success, 1 the API or an agent answered with an error, \
                  2 bad usage or invalid config, 3 the API could not be reached, \
                  4 some agents of a multi-agent call failed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server (and its HTTP API) from a TOML config file.
    Serve {
        /// The config file (see `agent-tunnel config example`).
        #[arg(short, long)]
        config: PathBuf,
        /// Log lines as text or JSON; levels come from RUST_LOG (default info).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Check or print a config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run an agent serving `ping` and `info`, for trying a fleet out.
    Agent(agent::AgentArgs),
    /// List or show connected agents.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Call an agent: `call NAME ACTION [JSON]`; or the agents a selector
    /// selects, `call -l SELECTOR ACTION [JSON]` (`--all` for every agent),
    /// results printed as each answers.
    Call {
        #[command(flatten)]
        api: ApiArgs,
        /// Call the agents this selector selects, e.g. `role=web,region in (eu,us)`.
        #[arg(short = 'l', long, conflicts_with = "all")]
        selector: Option<String>,
        /// Call every connected agent.
        #[arg(long)]
        all: bool,
        /// With -l or --all: at most this many calls in flight at once.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Milliseconds to wait for each agent (default: the server's).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// NAME ACTION [JSON] (ACTION [JSON] with -l or --all).
        #[arg(num_args = 1..=3, required = true)]
        args: Vec<String>,
    },
    /// Disconnect an agent (it may reconnect).
    Kick {
        #[command(flatten)]
        api: ApiArgs,
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Revoke a name: its agent is disconnected and refused from now on.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a revocation.
    Unrevoke {
        #[command(flatten)]
        api: ApiArgs,
        name: String,
    },
    /// The server's counts.
    Stats {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a completion script for a shell.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config file: exit 0 when valid, else 2 with the key at fault.
    Check { file: PathBuf },
    /// Print a commented example config.
    Example,
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// A table of the connected agents.
    Ls {
        #[command(flatten)]
        api: ApiArgs,
        /// Only the agents this selector selects, e.g. `role=web`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// One agent, as JSON.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        name: String,
    },
}

/// Where the API is and how to authenticate. The token never comes from
/// the command line: from AGENT_TUNNEL_TOKEN or a file.
#[derive(Args, Clone)]
pub(crate) struct ApiArgs {
    /// The API's URL.
    #[arg(
        long,
        env = "AGENT_TUNNEL_API",
        default_value = "http://127.0.0.1:7801"
    )]
    pub api: String,
    /// A file holding the API token (else AGENT_TUNNEL_TOKEN is used).
    #[arg(long, env = "AGENT_TUNNEL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let code = runtime.block_on(run(cli.command));
    ExitCode::from(code)
}

async fn run(command: Command) -> u8 {
    match command {
        Command::Serve { config, log_format } => serve::run(&config, log_format).await,
        Command::Config(ConfigCommand::Check { file }) => match config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::USAGE
            }
        },
        Command::Config(ConfigCommand::Example) => {
            print!("{}", config::EXAMPLE);
            exit::OK
        }
        Command::Agent(args) => agent::run(args).await,
        Command::Agents(AgentsCommand::Ls { api, selector }) => {
            ops::list(&api, selector.as_deref()).await
        }
        Command::Agents(AgentsCommand::Show { api, name }) => ops::show(&api, &name).await,
        Command::Call {
            api,
            selector,
            all,
            concurrency,
            timeout_ms,
            args,
        } => {
            // `--all` is the selector that selects every agent.
            let many = selector.or_else(|| all.then(String::new));
            ops::call(&api, many.as_deref(), concurrency, timeout_ms, &args).await
        }
        Command::Kick { api, name, reason } => ops::kick(&api, &name, reason).await,
        Command::Revoke { api, name, reason } => ops::revoke(&api, &name, reason, true).await,
        Command::Unrevoke { api, name } => ops::revoke(&api, &name, None, false).await,
        Command::Stats { api } => ops::stats(&api).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "agent-tunnel",
                &mut std::io::stdout(),
            );
            exit::OK
        }
    }
}

/// Logs through tracing to stderr, as text or JSON, filtered by RUST_LOG.
pub(crate) fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
