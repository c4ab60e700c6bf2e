//! Asking the operator for input: a terminal prompt, or, for scripts, an environment
//! variable or a line on stdin.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};

/// Username used when none is given and there is no terminal to ask on.
pub const DEFAULT_USERNAME: &str = "admin";

fn env_value(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// One line from stdin without its line ending; an error at end of input.
fn stdin_line(what: &str, env_hint: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("cannot read the {what} from stdin"))?;
    if n == 0 {
        bail!("no {what} on stdin (set {env_hint}, or run in a terminal)");
    }
    Ok(strip_line_ending(&line).to_owned())
}

fn strip_line_ending(line: &str) -> &str {
    line.strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(line)
}

/// A visible prompt on stderr, answered on the terminal.
fn ask_visible(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read from the terminal")?;
    Ok(line.trim().to_owned())
}

/// The login name: `given`, else asked on a terminal (empty answer: `admin`), else `admin`.
pub fn username(given: Option<&str>) -> anyhow::Result<String> {
    if let Some(u) = given.map(str::trim).filter(|u| !u.is_empty()) {
        return Ok(u.to_owned());
    }
    if stdin_is_terminal() {
        let answer = ask_visible(&format!("Username [{DEFAULT_USERNAME}]: "))?;
        if !answer.is_empty() {
            return Ok(answer);
        }
    }
    Ok(DEFAULT_USERNAME.to_owned())
}

/// A secret: from `env_var` when set, else a hidden terminal prompt, else a stdin line.
pub fn secret(prompt: &str, what: &str, env_var: &str) -> anyhow::Result<String> {
    let value = if let Some(v) = env_value(env_var) {
        v
    } else if stdin_is_terminal() {
        rpassword::prompt_password(prompt).with_context(|| format!("cannot read the {what}"))?
    } else {
        stdin_line(what, env_var)?
    };
    if value.is_empty() {
        bail!("empty {what}");
    }
    Ok(value)
}

/// A short visible answer (a TOTP code): `env_var`, else a terminal prompt, else a stdin line.
pub fn code(prompt: &str, env_var: &str) -> anyhow::Result<String> {
    let value = if let Some(v) = env_value(env_var) {
        v
    } else if stdin_is_terminal() {
        ask_visible(prompt)?
    } else {
        stdin_line("code", env_var)?
    };
    let value = value.trim().to_owned();
    if value.is_empty() {
        bail!("empty code");
    }
    Ok(value)
}

/// A new user's password: `LATTICE_NEW_PASSWORD`, else typed twice on a terminal,
/// else a stdin line.
pub fn new_password(username: &str) -> anyhow::Result<String> {
    const VAR: &str = "LATTICE_NEW_PASSWORD";
    if env_value(VAR).is_none() && stdin_is_terminal() {
        let first = secret(&format!("Password for {username}: "), "password", VAR)?;
        let again = rpassword::prompt_password("Repeat the password: ")
            .context("cannot read the password")?;
        if first != again {
            bail!("the passwords do not match");
        }
        return Ok(first);
    }
    secret("", "password", VAR)
}

/// This machine's name for token labels: `/etc/hostname`, else `$HOSTNAME`, else `cli`.
pub fn hostname() -> String {
    let from_file = std::fs::read_to_string("/etc/hostname").ok();
    pick_hostname(from_file.as_deref(), env_value("HOSTNAME").as_deref())
}

fn pick_hostname(file: Option<&str>, env: Option<&str>) -> String {
    [file, env]
        .into_iter()
        .flatten()
        .map(|h| h.lines().next().unwrap_or("").trim())
        .find(|h| !h.is_empty())
        .map(|h| h.chars().filter(|c| !c.is_control()).collect())
        .unwrap_or_else(|| "cli".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings_are_stripped() {
        assert_eq!(strip_line_ending("pw\n"), "pw");
        assert_eq!(strip_line_ending("pw\r\n"), "pw");
        assert_eq!(strip_line_ending(" pw "), " pw ");
    }

    #[test]
    fn hostname_falls_back() {
        assert_eq!(pick_hostname(Some("box\n"), Some("env")), "box");
        assert_eq!(pick_hostname(Some("\n"), Some("env")), "env");
        assert_eq!(pick_hostname(None, None), "cli");
    }
}
