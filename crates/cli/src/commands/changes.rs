//! `lattice intent ...`, `lattice plan ...` and `lattice agent-release ...`:
//! reviewed changes.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Ctx, parse, segment};
use sha2::Digest as _;

use crate::args::{AgentReleaseCommand, IntentCommand, PlanCommand};
use crate::output::{Format, Table, format_ms};

/// An intent as the server describes it.
#[derive(Debug, Deserialize)]
struct Intent {
    name: String,
    kind: String,
    selector: Value,
    version: i64,
    created_at_ms: i64,
    created_by: String,
}

#[derive(Debug, Deserialize)]
struct IntentList {
    intents: Vec<Intent>,
}

fn intents_table(intents: Vec<Intent>) -> Table {
    let mut t = Table::new(&["NAME", "KIND", "SELECTOR", "VERSION", "CHANGED", "BY"]);
    for i in intents {
        t.row(vec![
            i.name,
            i.kind,
            i.selector.to_string(),
            i.version.to_string(),
            format_ms(i.created_at_ms),
            i.created_by,
        ]);
    }
    t
}

/// A plan's node.
#[derive(Debug, Deserialize)]
struct Target {
    node: String,
    wave: i64,
    base_hash: String,
    diff: String,
    drift: bool,
    state: String,
    #[serde(default)]
    result: Option<Value>,
}

/// A plan as the server describes it.
#[derive(Debug, Deserialize)]
struct Plan {
    id: String,
    hash: String,
    state: String,
    intent: String,
    intent_version: i64,
    author: String,
    created_at_ms: i64,
    #[serde(default)]
    decided_by: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
struct PlanList {
    plans: Vec<Plan>,
}

fn plans_table(plans: Vec<Plan>) -> Table {
    let mut t = Table::new(&["ID", "STATE", "INTENT", "AUTHOR", "DECIDED BY", "CREATED"]);
    for p in plans {
        t.row(vec![
            p.id,
            p.state,
            format!("{} v{}", p.intent, p.intent_version),
            p.author,
            p.decided_by.unwrap_or_else(|| "-".into()),
            format_ms(p.created_at_ms),
        ]);
    }
    t
}

fn status_table(p: Plan) -> Table {
    let mut t = Table::new(&["NODE", "WAVE", "STATE", "DRIFT", "RESULT"]);
    for n in p.targets {
        let result = n.result.map_or_else(
            || "-".to_owned(),
            |r| {
                r.get("after")
                    .or_else(|| r.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_owned()
            },
        );
        t.row(vec![
            n.node,
            if n.wave == 0 {
                "canary".into()
            } else {
                n.wave.to_string()
            },
            n.state,
            n.drift.to_string(),
            result,
        ]);
    }
    t
}

/// A unified diff, coloured when `colour` (red removed, green added, cyan hunks).
fn coloured(diff: &str, colour: bool) -> String {
    if !colour {
        return diff.to_owned();
    }
    diff.lines()
        .map(|l| {
            let code = if l.starts_with("+++") || l.starts_with("---") {
                "1"
            } else if l.starts_with('+') {
                "32"
            } else if l.starts_with('-') {
                "31"
            } else if l.starts_with("@@") {
                "36"
            } else {
                ""
            };
            if code.is_empty() {
                format!("{l}\n")
            } else {
                format!("\x1b[{code}m{l}\x1b[0m\n")
            }
        })
        .collect()
}

/// Print a plan for review: its hash, then every node's diff.
fn print_plan(ctx: &Ctx, body: &Value) -> anyhow::Result<()> {
    if ctx.format == Format::Json {
        return crate::output::print_json(body);
    }
    let p: Plan = parse(body)?;
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    println!("plan {}  ({})", p.id, p.state);
    println!("intent {} v{}, by {}", p.intent, p.intent_version, p.author);
    println!("hash {}", p.hash);
    if let Some(reason) = p.reason {
        println!("reason: {reason}");
    }
    for t in &p.targets {
        println!();
        let drift = if t.drift {
            "  DRIFT: edited on the node since Lattice applied it"
        } else {
            ""
        };
        println!(
            "node {} (wave {}, {}; now {}){drift}",
            t.node, t.wave, t.state, t.base_hash
        );
        if t.diff.is_empty() {
            println!("  no change");
        } else {
            print!("{}", coloured(&t.diff, colour));
        }
    }
    if p.state == "pending" {
        println!("\napprove: lattice plan approve {} --hash {}", p.id, p.hash);
    }
    Ok(())
}

/// Run an `intent` subcommand.
pub async fn intents(ctx: &Ctx, cmd: IntentCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        IntentCommand::List => {
            let body = api.get("/api/v1/intents").await?;
            ctx.show(&body, |l: IntentList| intents_table(l.intents))?;
        }
        IntentCommand::Get { name } => {
            let body = api
                .get(&format!("/api/v1/intents/{}", segment(&name)?))
                .await?;
            match ctx.format {
                Format::Json => crate::output::print_json(&body)?,
                Format::Table => {
                    let text = serde_norway::to_string(&body).context("render the intent")?;
                    print!("{text}");
                }
            }
        }
        IntentCommand::Apply { file } => {
            let text = super::policy::read(&file)?;
            let doc: Value = serde_norway::from_str(&text)
                .with_context(|| format!("{file}: not YAML or JSON"))?;
            let body = api.post("/api/v1/intents", Some(&doc)).await?;
            let i: Intent = parse(&body)?;
            ctx.show(&body, |i: Intent| intents_table(vec![i]))?;
            eprintln!(
                "stored intent {} version {}: render a plan with lattice intent diff {}",
                i.name, i.version, i.name
            );
        }
        IntentCommand::Diff { name } => {
            let body = api
                .post("/api/v1/plans", Some(&json!({ "intent": name })))
                .await?;
            print_plan(ctx, &body)?;
        }
        IntentCommand::History { name } => {
            let body = api
                .get(&format!("/api/v1/intents/{}/history", segment(&name)?))
                .await?;
            ctx.show(&body, |l: IntentList| intents_table(l.intents))?;
        }
        IntentCommand::Delete { name } => {
            api.delete(&format!("/api/v1/intents/{}", segment(&name)?))
                .await?;
            eprintln!("deleted intent {name} (its history stays)");
        }
    }
    Ok(())
}

/// Run a `plan` subcommand.
pub async fn plans(ctx: &Ctx, cmd: PlanCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let plan_path =
        |id: &str| -> anyhow::Result<String> { Ok(format!("/api/v1/plans/{}", segment(id)?)) };
    match cmd {
        PlanCommand::Create { intent, targets } => {
            let body = api
                .post(
                    "/api/v1/plans",
                    Some(&json!({"intent": intent, "targets": targets})),
                )
                .await?;
            print_plan(ctx, &body)?;
        }
        PlanCommand::List => {
            let body = api.get("/api/v1/plans").await?;
            ctx.show(&body, |l: PlanList| plans_table(l.plans))?;
        }
        PlanCommand::Show { id } => {
            let body = api.get(&plan_path(&id)?).await?;
            print_plan(ctx, &body)?;
        }
        PlanCommand::Status { id } => {
            let body = api.get(&plan_path(&id)?).await?;
            let p: Plan = parse(&body)?;
            if ctx.format == Format::Table {
                println!(
                    "plan {}: {}{}",
                    p.id,
                    p.state,
                    p.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
            }
            ctx.show(&body, status_table)?;
        }
        PlanCommand::Approve {
            id,
            hash,
            totp_code,
        } => {
            let path = format!("{}/approve", plan_path(&id)?);
            let mut body = json!({ "hash": hash });
            if let Some(code) = totp_code {
                body["totp_code"] = json!(code);
            }
            let body = match api.post(&path, Some(&body)).await {
                Err(e)
                    if e.downcast_ref::<crate::client::ApiError>()
                        .is_some_and(|e| e.code == "mfa_required") =>
                {
                    // Approving needs a TOTP completed within 5 minutes: ask once.
                    let code = crate::prompt::code("TOTP code: ", "LATTICE_TOTP_CODE")?;
                    api.post(&path, Some(&json!({"hash": hash, "totp_code": code})))
                        .await?
                }
                other => other?,
            };
            ctx.show(&body, status_table)?;
            eprintln!("approved plan {id}: follow it with lattice plan status {id}");
        }
        PlanCommand::Reject { id, reason } => {
            api.post(
                &format!("{}/reject", plan_path(&id)?),
                Some(&json!({ "reason": reason })),
            )
            .await?;
            eprintln!("rejected plan {id}");
        }
        PlanCommand::Cancel { id } => {
            api.post(&format!("{}/cancel", plan_path(&id)?), None)
                .await?;
            eprintln!("cancelled plan {id}");
        }
    }
    Ok(())
}

/// A release as the server describes it.
#[derive(Debug, Deserialize)]
struct Release {
    version: String,
    arch: String,
    sha256: String,
    size: u64,
    uploaded_at_ms: i64,
    uploaded_by: String,
}

#[derive(Debug, Deserialize)]
struct ReleaseList {
    releases: Vec<Release>,
    release_key: String,
}

fn releases_table(releases: Vec<Release>) -> Table {
    let mut t = Table::new(&["VERSION", "ARCH", "SIZE", "SHA256", "UPLOADED", "BY"]);
    for r in releases {
        t.row(vec![
            r.version,
            r.arch,
            super::upload::human_bytes(r.size),
            r.sha256,
            format_ms(r.uploaded_at_ms),
            r.uploaded_by,
        ]);
    }
    t
}

/// `lattice agent-release ...`.
pub async fn releases(ctx: &Ctx, cmd: AgentReleaseCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        AgentReleaseCommand::Upload {
            file,
            version,
            arch,
        } => {
            let data = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let local = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)));
            let path = format!(
                "/api/v1/agent-releases?version={}&arch={}",
                segment(&version)?,
                segment(&arch)?
            );
            let reply = super::upload::upload(
                &api,
                reqwest::Method::POST,
                &path,
                "application/octet-stream",
                &data,
            )
            .await?;
            let r: Release = parse(&reply.body)?;
            anyhow::ensure!(
                r.sha256 == local && r.size == data.len() as u64,
                "the server stored {} ({} bytes) but {} is {local} ({} bytes): upload again",
                r.sha256,
                r.size,
                file.display(),
                data.len()
            );
            ctx.show(&reply.body, |r: Release| releases_table(vec![r]))?;
        }
        AgentReleaseCommand::List => {
            let body = api.get("/api/v1/agent-releases").await?;
            let l: ReleaseList = parse(&body)?;
            if ctx.format == Format::Table {
                eprintln!(
                    "release key (agents pin it at enrollment): {}",
                    l.release_key
                );
            }
            ctx.show(&body, |l: ReleaseList| releases_table(l.releases))?;
        }
    }
    Ok(())
}
