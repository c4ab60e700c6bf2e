//! `lattice-server`: the Lattice control plane.
//!
//! With no flags it runs every service in one process on the embedded default
//! (SQLite, local cache, generated keys under `./lattice-data`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

mod malloc;

use clap::{Parser, Subcommand};
use lattice_core::config::{Config, Overrides};

#[derive(Parser, Debug)]
#[command(
    name = "lattice-server",
    version,
    about = "The Lattice fleet control plane"
)]
struct Cli {
    /// Configuration file (default: ./lattice.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Where embedded state lives.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Gateway listen address.
    #[arg(long)]
    listen: Option<String>,
    /// Gateway TLS: self-signed, files or off.
    #[arg(long)]
    tls: Option<String>,
    /// Services to run here: all, or a list such as gateway,identity.
    #[arg(long, env = "LATTICE_SERVICES", default_value = "all")]
    services: String,
    /// Identity service's internal gRPC listen address.
    #[arg(long)]
    identity_listen: Option<String>,
    /// Identity service address when it runs elsewhere.
    #[arg(long)]
    identity_url: Option<String>,
    /// Storage service's internal gRPC listen address.
    #[arg(long)]
    storage_listen: Option<String>,
    /// Storage service address when it runs elsewhere.
    #[arg(long)]
    storage_url: Option<String>,
    /// Tasks service's internal gRPC listen address.
    #[arg(long)]
    tasks_listen: Option<String>,
    /// Tasks service address when it runs elsewhere.
    #[arg(long)]
    tasks_url: Option<String>,
    /// Tunnel service's internal gRPC listen address.
    #[arg(long)]
    tunnel_listen: Option<String>,
    /// Tunnel service address when it runs elsewhere.
    #[arg(long)]
    tunnel_url: Option<String>,
    /// Policy service's internal gRPC listen address.
    #[arg(long)]
    policy_listen: Option<String>,
    /// Policy service address when it runs elsewhere.
    #[arg(long)]
    policy_url: Option<String>,
    /// Where a process without the gateway serves /health, /ready and /metrics.
    #[arg(long)]
    ops_listen: Option<String>,
    /// Log filter (info, debug, lattice_identity=debug,info, ...).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the services (the default).
    Run,
    /// Apply pending database migrations and exit (the release step).
    Migrate,
    /// Load and validate the configuration, print the effective non-secret values, exit.
    CheckConfig,
    /// Write a consistent backup of this installation (the SQLite database, objects,
    /// master key, TLS material) into a new directory; safe while the server runs.
    Backup {
        /// The directory to create (or an empty one).
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// Exit 0 when this process's `/health` answers 200 on loopback (the gateway's
    /// port, or `ops_listen` for a process without the gateway): the container
    /// health check, with nothing but this binary in the image.
    Healthcheck,
    /// Restore a backup into this installation's data dir, which must hold no
    /// database yet. Checks everything (checksums, the master key) before writing.
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let malloc_arenas = malloc::limit_arenas();
    let cli = Cli::parse();
    let overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        gateway_listen: cli.listen.clone(),
        gateway_tls: cli.tls.clone(),
        identity_listen: cli.identity_listen.clone(),
        identity_url: cli.identity_url.clone(),
        storage_listen: cli.storage_listen.clone(),
        storage_url: cli.storage_url.clone(),
        tasks_listen: cli.tasks_listen.clone(),
        tasks_url: cli.tasks_url.clone(),
        tunnel_listen: cli.tunnel_listen.clone(),
        tunnel_url: cli.tunnel_url.clone(),
        policy_listen: cli.policy_listen.clone(),
        policy_url: cli.policy_url.clone(),
        log_level: cli.log_level.clone(),
        ops_listen: cli.ops_listen.clone(),
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = match Config::load(cli.config.as_deref(), &env, &overrides) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("lattice-server: {err}");
            return ExitCode::from(2);
        }
    };
    let roles = match lattice_server::parse_roles(&cli.services) {
        Ok(r) => r,
        Err(err) => {
            eprintln!("lattice-server: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(err) => {
            eprintln!("lattice-server: start runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async_main(
        cli.command.unwrap_or(Command::Run),
        config,
        roles,
        malloc_arenas,
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lattice-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn async_main(
    command: Command,
    config: Config,
    roles: std::collections::BTreeSet<lattice_server::Role>,
    malloc_arenas: Option<usize>,
) -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let mut telemetry = lattice_core::telemetry::init(
        "lattice-server",
        &config.log_level,
        config.log_format == "json",
        config.otel_exporter_otlp_endpoint.as_deref(),
    )?;
    if let Some(arenas) = malloc_arenas {
        tracing::debug!(
            arenas,
            "glibc malloc arenas limited (MALLOC_ARENA_MAX overrides)"
        );
    }
    let result = match command {
        Command::Healthcheck => healthcheck(&config, &roles).await,
        Command::Backup { to } => {
            let r = lattice_server::backup::backup(&config, &to).await?;
            println!(
                "backed up {} files ({} bytes) to {}",
                r.files,
                r.bytes,
                to.display()
            );
            if !r.database_included {
                println!("the database is Postgres: back it up with pg_dump (docs/backup.md)");
            }
            if !r.master_key_included {
                println!(
                    "the master key comes from LATTICE_MASTER_KEY and is not in the backup: keep it in your secret manager"
                );
            }
            Ok(())
        }
        Command::Restore { from } => {
            let r = lattice_server::backup::restore(&config, &from).await?;
            println!(
                "restored {} files into {}",
                r.files,
                config.data_dir.display()
            );
            if !r.database_included {
                println!("the backup holds no database: restore the Postgres dump with pg_restore");
            }
            Ok(())
        }
        Command::Migrate => {
            let report = lattice_server::migrate(&config).await?;
            if report.applied.is_empty() {
                println!("database is up to date");
            }
            for (component, version, name) in report.applied {
                println!("applied {component} v{version}: {name}");
            }
            Ok(())
        }
        Command::CheckConfig => {
            println!("configuration is valid");
            println!("data_dir = {}", config.data_dir.display());
            println!(
                "database = {}",
                lattice_core::db::redact_url(&config.database_url())
            );
            println!(
                "redis = {}",
                if config.redis_url.is_some() {
                    "configured"
                } else {
                    "in-process"
                }
            );
            println!("gateway.listen = {}", config.gateway.listen);
            let tls = match config.gateway.tls {
                lattice_core::config::TlsMode::SelfSigned => "self-signed",
                lattice_core::config::TlsMode::Files => "files",
                lattice_core::config::TlsMode::Off => "off",
            };
            println!("gateway.tls = {tls}");
            println!(
                "gateway.public_url = {}",
                config.gateway.public_url.as_deref().unwrap_or("(unset)")
            );
            println!("identity.listen = {}", config.identity.listen);
            println!("storage.listen = {}", config.storage.listen);
            println!("tasks.listen = {}", config.tasks.listen);
            println!(
                "tasks.async_push_enabled = {}",
                config.tasks.async_push_enabled
            );
            println!("tunnel.listen = {}", config.tunnel.listen);
            println!("policy.listen = {}", config.policy.listen);
            Ok(())
        }
        Command::Run => run(config, roles).await,
    };
    telemetry.shutdown();
    result
}

async fn run(
    config: Config,
    roles: std::collections::BTreeSet<lattice_server::Role>,
) -> anyhow::Result<()> {
    let shutdown = lattice_core::shutdown::on_signal();
    let running = lattice_server::start(config, &roles, shutdown).await?;
    print_banner(&running);
    running.wait().await
}

fn print_banner(running: &lattice_server::Running) {
    let mut out = String::new();
    if let Some(addr) = running.gateway_addr {
        let scheme = if running.tls { "https" } else { "http" };
        out.push_str(&format!("Lattice is listening on {scheme}://{addr}\n"));
    }
    if let Some(addr) = running.identity_addr {
        out.push_str(&format!("identity service (internal gRPC) on {addr}\n"));
    }
    if let Some(addr) = running.ops_addr {
        out.push_str(&format!(
            "ops endpoints (/health /ready /metrics) on http://{addr}\n"
        ));
    }
    if let Some(addr) = running.storage_addr {
        out.push_str(&format!("storage service (internal gRPC) on {addr}\n"));
    }
    if let Some(addr) = running.tasks_addr {
        out.push_str(&format!("tasks service (internal gRPC) on {addr}\n"));
    }
    if let Some(addr) = running.tunnel_addr {
        out.push_str(&format!("tunnel service (internal gRPC) on {addr}\n"));
    }
    if let Some(addr) = running.policy_addr {
        out.push_str(&format!("policy service (internal gRPC) on {addr}\n"));
    }
    if let Some(info) = &running.tls_info
        && let (Some(file), Some(fp)) = (&info.ca_file, &info.ca_fingerprint)
    {
        out.push_str(&format!("TLS CA: {} (SHA-256 {fp})\n", file.display()));
    }
    if let Some(admin) = &running.bootstrap {
        match &admin.password {
            Some(p) => out.push_str(&format!(
                "bootstrap admin created: username {} password {p}\n(shown once: change it or enable TOTP after logging in)\n",
                admin.username
            )),
            None => out.push_str(&format!(
                "bootstrap admin created: username {} (password from bootstrap_admin_password in the configuration)\n",
                admin.username
            )),
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

/// `GET /health` on loopback at the port this process serves it on; with TLS the
/// handshake is not verified (a liveness probe on loopback sends no credential).
async fn healthcheck(
    config: &Config,
    roles: &std::collections::BTreeSet<lattice_server::Role>,
) -> anyhow::Result<()> {
    let (port, tls) = match config.ops_listen {
        Some(addr) if !roles.contains(&lattice_server::Role::Gateway) => (addr.port(), false),
        _ => (
            config.gateway.listen.port(),
            config.gateway.tls != lattice_core::config::TlsMode::Off,
        ),
    };
    let url = format!(
        "{}://127.0.0.1:{port}/health",
        if tls { "https" } else { "http" }
    );
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .danger_accept_invalid_certs(tls)
        .build()?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    if resp.status() != reqwest::StatusCode::OK {
        anyhow::bail!("{url}: {}", resp.status());
    }
    println!("{url}: ok");
    Ok(())
}
