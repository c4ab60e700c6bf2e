//! `lattice`: the operator CLI for a Lattice control plane.
//!
//! Data goes to stdout (a table, or the server's JSON with `-o json`); messages and
//! errors go to stderr. Exit codes: 0 success, 1 failure, 2 usage error.

mod args;
mod client;
mod commands;
mod config;
mod duration;
mod output;
mod prompt;

use std::process::ExitCode;

use clap::Parser as _;

use crate::args::{Cli, Command};
use crate::client::ApiError;

fn main() -> ExitCode {
    // reqwest is built without a default crypto provider; if one is already
    // installed the call fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let is_login = matches!(cli.command, Command::Login(_));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err, is_login);
            ExitCode::FAILURE
        }
    }
}

fn report(err: &anyhow::Error, is_login: bool) {
    eprintln!("error: {err:#}");
    let Some(api) = err.downcast_ref::<ApiError>() else {
        return;
    };
    if let Some(s) = api.retry_after_s {
        eprintln!("hint: retry after {s} s");
    }
    if api.status == 401 && !is_login {
        eprintln!(
            "hint: the token may have expired or been revoked; run lattice login (or check {})",
            commands::TOKEN_ENV
        );
    }
}
