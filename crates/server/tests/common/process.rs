//! Running the real `lattice-server` binary in black-box tests.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The compiled server.
pub const BIN: &str = env!("CARGO_BIN_EXE_lattice-server");

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the binary and wait for the banner line starting with `prefix`; return the
/// rest of that line (an address or URL).
pub fn spawn(args: &[&str], env: &[(&str, &str)], prefix: &str) -> (Proc, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn lattice-server");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(&prefix) {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    let found = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server printed its banner");
    (Proc(child), found)
}

/// Every service in one process on loopback port 0, `tls` mode, fast password
/// hashing and the bootstrap password `admin-password-1`; returns the gateway URL.
pub fn spawn_all_in_one(data_dir: &Path, tls: &str, env: &[(&str, &str)]) -> (Proc, String) {
    let mut all_env = vec![
        ("LATTICE_BOOTSTRAP_ADMIN_PASSWORD", "admin-password-1"),
        ("LATTICE_IDENTITY__ARGON2_MEMORY_KIB", "64"),
        ("LATTICE_IDENTITY__ARGON2_ITERATIONS", "1"),
    ];
    all_env.extend_from_slice(env);
    spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--identity-listen",
            "127.0.0.1:0",
            "--storage-listen",
            "127.0.0.1:0",
            "--tasks-listen",
            "127.0.0.1:0",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--policy-listen",
            "127.0.0.1:0",
            "--tls",
            tls,
            "--data-dir",
            data_dir.to_str().expect("UTF-8 temp dir"),
        ],
        &all_env,
        "Lattice is listening on ",
    )
}
