//! `lattice-agent`: the Lattice node agent. It dials out to the control plane over
//! HTTPS and holds one gRPC stream; nothing on the node listens.

mod config;
mod host;
mod logs;
mod proxy;
mod run;
mod tasks;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};
use lattice_proto::agent::v1 as pb;

use crate::config::{AgentConfig, Credentials};

#[derive(Parser, Debug)]
#[command(name = "lattice-agent", version, about = "The Lattice node agent")]
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
        Command::Enroll {
            token,
            server,
            state_dir,
        } => enroll(&token, server, &state_dir).await,
        Command::Run { config, state_dir } => {
            let config = AgentConfig::load(&config)?;
            let creds = Credentials::load(&state_dir)?;
            tracing::info!(
                server = %creds.server,
                node = %creds.node_id,
                capabilities = ?config.capabilities,
                proxy_ports = ?config.proxy_ports,
                "lattice-agent starting"
            );
            let agent = Arc::new(run::Agent {
                creds,
                config,
                running: Mutex::new(Default::default()),
                unacked: Mutex::new(Vec::new()),
                out: Mutex::new(None),
            });
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
    let join = parse_join_token(token)?;
    let server = server
        .unwrap_or(join.server_url)
        .trim_end_matches('/')
        .to_owned();
    let channel = tls::channel(&server, join.ca_sha256.as_deref())?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let facts = tokio::task::spawn_blocking(run::facts).await?;
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
    };
    creds.save(state_dir)?;
    println!(
        "enrolled as node {} (credential in {})",
        resp.node_id,
        Credentials::path(state_dir).display()
    );
    Ok(())
}

struct Join {
    server_url: String,
    ca_sha256: Option<String>,
    secret: String,
}

/// `ljt1.<base64url(server)>.<ca hex or ->.<secret>`.
fn parse_join_token(token: &str) -> anyhow::Result<Join> {
    use base64::Engine as _;
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [prefix, url, ca, secret] = parts.as_slice() else {
        anyhow::bail!("join token: expected ljt1.<server>.<ca>.<secret>");
    };
    anyhow::ensure!(*prefix == "ljt1", "join token: unknown format {prefix:?}");
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(url)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| anyhow::anyhow!("join token: the server part does not decode"))?;
    let ca_sha256 = match *ca {
        "-" => None,
        h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Some(h.to_owned()),
        _ => anyhow::bail!("join token: the CA fingerprint is not 64 hex digits"),
    };
    anyhow::ensure!(!secret.is_empty(), "join token: the secret is missing");
    Ok(Join {
        server_url: url,
        ca_sha256,
        secret: (*secret).to_owned(),
    })
}
