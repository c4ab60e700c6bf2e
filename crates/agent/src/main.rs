//! `lattice-agent`: the Lattice node agent. It dials out to the control plane over
//! HTTPS and holds one gRPC stream; nothing on the node listens.

mod config;
mod files;
mod firewall;
mod host;
mod logs;
mod proxy;
mod run;
mod tasks;
mod tls;
mod update;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use lattice_proto::agent::v1 as pb;

use crate::config::{AgentConfig, Credentials};

#[derive(Parser, Debug)]
#[command(name = "lattice-agent", version = run::VERSION, about = "The Lattice node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Exchange a join token for this node's credential (stored 0600 in the state dir).
    Enroll {
        /// The join token from `POST /api/v1/nodes/join-tokens`.
        #[arg(long, env = "LATTICE_JOIN_TOKEN")]
        token: String,
        /// Server URL (default: the one the token carries).
        #[arg(long, env = "LATTICE_SERVER")]
        server: Option<String>,
        /// Where the credential is kept.
        #[arg(
            long,
            env = "LATTICE_AGENT_STATE_DIR",
            default_value = "/var/lib/lattice-agent"
        )]
        state_dir: PathBuf,
    },
    /// Connect and serve until stopped; reconnects forever.
    Run {
        /// Local configuration (capabilities, exec allowlist, proxy ports, logs).
        #[arg(
            long,
            env = "LATTICE_AGENT_CONFIG",
            default_value = "/etc/lattice/agent.toml"
        )]
        config: PathBuf,
        /// Where the credential is kept.
        #[arg(
            long,
            env = "LATTICE_AGENT_STATE_DIR",
            default_value = "/var/lib/lattice-agent"
        )]
        state_dir: PathBuf,
    },
    /// Print `lattice-agent <version>` (what an update checks a new binary with).
    Version,
    /// Roll an update back when the new agent does not reconnect in time (started
    /// by the agent from its previous binary; not for manual use).
    #[command(hide = true)]
    UpdateWatchdog {
        #[arg(long)]
        state_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LATTICE_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One thread: an agent is idle almost always and must stay small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lattice-agent: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async_main(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lattice-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn async_main(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Version => {
            println!("lattice-agent {}", run::VERSION);
            Ok(())
        }
        Command::UpdateWatchdog { state_dir } => update::watchdog(&state_dir).await,
        Command::Enroll {
            token,
            server,
            state_dir,
        } => enroll(&token, server, &state_dir).await,
        Command::Run { config, state_dir } => {
            let mut config = AgentConfig::load(&config)?;
            config.state_dir = state_dir.clone();
            let creds = Credentials::load(&state_dir)?;
            tracing::info!(
                server = %creds.server,
                node = %creds.node_id,
                capabilities = ?config.capabilities,
                proxy_ports = ?config.proxy_ports,
                "lattice-agent starting"
            );
            // Which process is the agent (the update watchdog stops it by this).
            let _ = std::fs::write(state_dir.join("agent.pid"), std::process::id().to_string());
            let agent = Arc::new(run::Agent::new(creds, config, state_dir));
            update::resume(&agent);
            let shutdown = lattice_core::shutdown::on_signal();
            run::run(agent, shutdown).await
        }
    }
}

async fn enroll(
    token: &str,
    server: Option<String>,
    state_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let join = lattice_proto::join_token::JoinToken::parse(token).map_err(anyhow::Error::msg)?;
    let server = server
        .unwrap_or(join.server_url)
        .trim_end_matches('/')
        .to_owned();
    let channel = tls::channel(&server, join.ca_sha256.as_deref())?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    // Enrollment reports host facts only: managed artifacts follow on connect.
    let facts = tokio::task::spawn_blocking(|| run::facts(&config::AgentConfig::default())).await?;
    let resp = client
        .enroll(pb::EnrollRequest {
            join_secret: join.secret,
            facts: Some(facts),
        })
        .await
        .map_err(|st| anyhow::anyhow!("enrollment refused: {}", st.message()))?
        .into_inner();
    let creds = Credentials {
        server,
        ca_sha256: join.ca_sha256,
        node_id: resp.node_id.clone(),
        node_token: resp.node_token,
        release_key: (!resp.release_key.is_empty()).then_some(resp.release_key),
    };
    creds.save(state_dir)?;
    println!(
        "enrolled as node {} (credential in {})",
        resp.node_id,
        Credentials::path(state_dir).display()
    );
    Ok(())
}
