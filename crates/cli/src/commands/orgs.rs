//! `lattice org ...` (your memberships: list, use, join, invite) and `lattice orgs
//! ...` (every org of the platform, scope orgs:admin).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{CLI_TOKEN_LIFETIME_S, cli_token_name, revoke_previous};
use super::{Ctx, parse, segment};
use crate::args::{LimitArgs, OrgCommand, OrgsCommand};
use crate::config::{self, StoredConfig};
use crate::output::{Table, format_ms, scopes_cell};

#[derive(Debug, Deserialize)]
struct Membership {
    org: String,
    scopes: Vec<String>,
    home: bool,
    current: bool,
}

#[derive(Debug, Deserialize)]
struct MembershipList {
    memberships: Vec<Membership>,
}

#[derive(Debug, Deserialize, Default)]
struct Limits {
    max_buckets: i64,
    max_stored_bytes: i64,
    max_nodes: i64,
    max_tokens: i64,
}

#[derive(Debug, Deserialize)]
struct Org {
    name: String,
    state: String,
    created_at_ms: i64,
    member_count: i64,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    usage: Option<BTreeMap<String, i64>>,
}

#[derive(Debug, Deserialize)]
struct OrgList {
    orgs: Vec<Org>,
}

fn limit(n: i64) -> String {
    if n == 0 { "-".into() } else { n.to_string() }
}

fn orgs_table(orgs: Vec<Org>) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "MEMBERS",
        "MAX BUCKETS",
        "MAX BYTES",
        "MAX NODES",
        "MAX TOKENS",
        "CREATED",
    ]);
    for o in orgs {
        t.row(vec![
            o.name,
            o.state,
            o.member_count.to_string(),
            limit(o.limits.max_buckets),
            limit(o.limits.max_stored_bytes),
            limit(o.limits.max_nodes),
            limit(o.limits.max_tokens),
            format_ms(o.created_at_ms),
        ]);
    }
    t
}

fn org_detail(o: Org) -> Table {
    let usage = o
        .usage
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for (field, value) in [
        ("name", o.name),
        ("state", o.state),
        ("members", o.member_count.to_string()),
        ("max buckets", limit(o.limits.max_buckets)),
        ("max stored bytes", limit(o.limits.max_stored_bytes)),
        ("max nodes", limit(o.limits.max_nodes)),
        ("max tokens", limit(o.limits.max_tokens)),
        ("created", format_ms(o.created_at_ms)),
    ] {
        t.row(vec![field.to_owned(), value]);
    }
    if o.usage.is_some() {
        t.row(vec![
            "holds".into(),
            if usage.is_empty() {
                "nothing".into()
            } else {
                usage
            },
        ]);
    }
    t
}

fn limits_body(l: LimitArgs, base: &Limits) -> Value {
    json!({
        "max_buckets": l.max_buckets.unwrap_or(base.max_buckets),
        "max_stored_bytes": l.max_stored_bytes.unwrap_or(base.max_stored_bytes),
        "max_nodes": l.max_nodes.unwrap_or(base.max_nodes),
        "max_tokens": l.max_tokens.unwrap_or(base.max_tokens),
    })
}

/// Run an `org` subcommand.
pub async fn run_org(ctx: &Ctx, cmd: OrgCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        OrgCommand::List => {
            let body = api.get("/api/v1/auth/orgs").await?;
            ctx.show(&body, |l: MembershipList| {
                let mut t = Table::new(&["", "ORG", "SCOPES", "HOME"]);
                for m in l.memberships {
                    t.row(vec![
                        if m.current { "*" } else { "" }.into(),
                        m.org,
                        scopes_cell(&m.scopes),
                        if m.home { "yes" } else { "" }.into(),
                    ]);
                }
                t
            })?;
        }
        OrgCommand::Use { name } => {
            let list: MembershipList = parse(&api.get("/api/v1/auth/orgs").await?)?;
            let Some(m) = list.memberships.iter().find(|m| m.org == name) else {
                let yours: Vec<&str> = list.memberships.iter().map(|m| m.org.as_str()).collect();
                bail!(
                    "you are not a member of org {name:?} (yours: {})",
                    yours.join(", ")
                );
            };
            if m.current {
                eprintln!("already acting in org {name}");
                return Ok(());
            }
            let body = json!({"name": cli_token_name(), "scopes": m.scopes,
                "expires_in_s": CLI_TOKEN_LIFETIME_S, "org": name});
            let created = api.post("/api/v1/tokens", Some(&body)).await?;
            let token = created["token"]
                .as_str()
                .filter(|t| !t.is_empty())
                .context("the server created a token but did not return its secret")?
                .to_owned();
            let old = config::load(&ctx.config_path)?
                .context("no stored login to switch (LATTICE_TOKEN cannot be switched)")?;
            let new = StoredConfig {
                token,
                ..old.clone()
            };
            config::save(&ctx.config_path, &new)?;
            revoke_previous(&old).await;
            eprintln!("now acting in org {name}");
        }
        OrgCommand::Join { link } => {
            let answer = api
                .post("/api/v1/invitations/accept", Some(&json!({"code": link})))
                .await?;
            let m: Membership = parse(&answer)?;
            eprintln!(
                "joined org {} with {}; act in it with: lattice org use {}",
                m.org,
                m.scopes.join(" "),
                m.org
            );
        }
        OrgCommand::Invite {
            username,
            scopes,
            expires_in_s,
        } => {
            let answer = api
                .post(
                    "/api/v1/invitations",
                    Some(&json!({"username": username, "scopes": scopes, "expires_in_s": expires_in_s})),
                )
                .await?;
            let link = answer["link"].as_str().unwrap_or_default();
            eprintln!(
                "invited {username}; hand them this link (it works once, until {}); they accept with: lattice org join LINK",
                format_ms(answer["expires_at_ms"].as_i64().unwrap_or(0))
            );
            println!("{link}");
        }
    }
    Ok(())
}

/// Run an `orgs` subcommand.
pub async fn run_orgs(ctx: &Ctx, cmd: OrgsCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let path =
        |name: &str| -> anyhow::Result<String> { Ok(format!("/api/v1/orgs/{}", segment(name)?)) };
    match cmd {
        OrgsCommand::List => {
            let body = api.get("/api/v1/orgs").await?;
            ctx.show(&body, |l: OrgList| orgs_table(l.orgs))?;
        }
        OrgsCommand::Create {
            name,
            admin,
            limits,
        } => {
            let mut body = json!({"name": name, "limits": limits_body(limits, &Limits::default())});
            if let Some(a) = admin {
                body["admin"] = json!(a);
            }
            let answer = api.post("/api/v1/orgs", Some(&body)).await?;
            ctx.show(&answer, org_detail)?;
        }
        OrgsCommand::Show { name } => {
            let body = api.get(&path(&name)?).await?;
            ctx.show(&body, org_detail)?;
        }
        OrgsCommand::Rename { name, new_name } => {
            let answer = api
                .send(
                    Method::PATCH,
                    &path(&name)?,
                    Some(&json!({"name": new_name})),
                )
                .await?
                .body;
            ctx.show(&answer, org_detail)?;
        }
        OrgsCommand::Limits { name, limits } => {
            let current: Org = parse(&api.get(&path(&name)?).await?)?;
            let body = json!({"limits": limits_body(limits, &current.limits)});
            let answer = api
                .send(Method::PATCH, &path(&name)?, Some(&body))
                .await?
                .body;
            ctx.show(&answer, org_detail)?;
        }
        OrgsCommand::Delete { name, force } => {
            let p = if force {
                format!("{}?force=true", path(&name)?)
            } else {
                path(&name)?
            };
            let answer = api.send(Method::DELETE, &p, None).await?.body;
            let removed: BTreeMap<String, BTreeMap<String, i64>> =
                serde_json::from_value(answer["removed"].clone()).unwrap_or_default();
            let what: Vec<String> = removed
                .values()
                .flat_map(|m| m.iter().map(|(k, n)| format!("{n} {k}")))
                .collect();
            eprintln!(
                "deleted org {name}{}",
                if what.is_empty() {
                    String::new()
                } else {
                    format!(" with {}", what.join(", "))
                }
            );
        }
    }
    Ok(())
}
