//! `lattice buckets ...`, `lattice bindings ...` and `lattice storage-tokens ...`.

use anyhow::bail;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Ctx, parse, segment};
use crate::args::{BindingsCommand, BucketsCommand, StorageTokensCommand};
use crate::client::Api;
use crate::output::{self, Format, Table, format_ms, format_opt_ms};

/// A bucket as the server describes it.
#[derive(Debug, Deserialize)]
struct Bucket {
    id: String,
    name: String,
    surface: String,
    created_at_ms: i64,
    #[serde(default)]
    active_deployment_id: Option<String>,
    #[serde(default)]
    secret: bool,
}

#[derive(Debug, Deserialize)]
struct BucketList {
    buckets: Vec<Bucket>,
}

fn bucket_table(buckets: Vec<Bucket>) -> Table {
    let mut t = Table::new(&["NAME", "SURFACE", "ACTIVE DEPLOYMENT", "CREATED", "ID"]);
    for b in buckets {
        t.row(vec![
            b.name,
            if b.secret {
                format!("{} (secret)", b.surface)
            } else {
                b.surface
            },
            b.active_deployment_id.unwrap_or_else(|| "-".to_owned()),
            format_ms(b.created_at_ms),
            b.id,
        ]);
    }
    t
}

/// Run a `buckets` subcommand.
pub async fn buckets(ctx: &Ctx, cmd: BucketsCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        BucketsCommand::Create {
            name,
            surface,
            secret,
        } => {
            let body = json!({ "name": name, "surface": surface.as_str(), "secret": secret });
            let answer = api.post("/api/v1/buckets", Some(&body)).await?;
            ctx.show(&answer, |b: Bucket| bucket_table(vec![b]))?;
            let kind = if secret { " secret" } else { "" };
            eprintln!("created{kind} {} bucket {name}", surface.as_str());
        }
        BucketsCommand::List { surface } => {
            let path = match surface {
                Some(s) => format!("/api/v1/buckets?surface={}", s.as_str()),
                None => "/api/v1/buckets".to_owned(),
            };
            let answer = api.get(&path).await?;
            ctx.show(&answer, |l: BucketList| bucket_table(l.buckets))?;
        }
        BucketsCommand::Delete { name } => {
            api.delete(&format!("/api/v1/buckets/{}", segment(&name)?))
                .await?;
            eprintln!("deleted bucket {name}");
        }
    }
    Ok(())
}

/// A host-name binding as the server describes it.
#[derive(Debug, Deserialize)]
pub struct Binding {
    /// Host name.
    pub host: String,
    /// Bucket served.
    pub bucket: String,
    /// The bucket's surface.
    #[serde(default)]
    pub surface: String,
    /// Whether it is served.
    pub enabled: bool,
    /// Creation time.
    pub created_at_ms: i64,
}

#[derive(Debug, Deserialize)]
struct BindingList {
    bindings: Vec<Binding>,
}

fn binding_table(bindings: Vec<Binding>) -> Table {
    let mut t = Table::new(&["HOST", "BUCKET", "SURFACE", "ENABLED", "CREATED"]);
    for b in bindings {
        t.row(vec![
            b.host,
            b.bucket,
            b.surface,
            if b.enabled { "yes" } else { "no" }.to_owned(),
            format_ms(b.created_at_ms),
        ]);
    }
    t
}

/// The `https://HOST/` addresses of the enabled bindings of `bucket`.
pub fn bucket_urls(bindings: &[Binding], bucket: &str) -> Vec<String> {
    bindings
        .iter()
        .filter(|b| b.enabled && b.bucket == bucket)
        .map(|b| format!("https://{}/", b.host))
        .collect()
}

/// Fetch the bindings and return the addresses that serve `bucket`.
pub async fn served_at(api: &Api, bucket: &str) -> anyhow::Result<Vec<String>> {
    let list: BindingList = parse(&api.get("/api/v1/bindings").await?)?;
    Ok(bucket_urls(&list.bindings, bucket))
}

/// Run a `bindings` subcommand.
pub async fn bindings(ctx: &Ctx, cmd: BindingsCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        BindingsCommand::Create { host, bucket } => {
            let host = host.trim().to_owned();
            if host.contains("://") || host.contains('/') {
                bail!("give a host name such as www.example.com, not a URL ({host:?})");
            }
            let body = json!({ "host": host, "bucket": bucket });
            let answer = api.post("/api/v1/bindings", Some(&body)).await?;
            ctx.show(&answer, |b: Binding| binding_table(vec![b]))?;
            eprintln!("https://{host}/ now serves bucket {bucket}");
        }
        BindingsCommand::List => {
            let answer = api.get("/api/v1/bindings").await?;
            ctx.show(&answer, |l: BindingList| binding_table(l.bindings))?;
        }
        BindingsCommand::Delete { host } => {
            api.delete(&format!("/api/v1/bindings/{}", segment(&host)?))
                .await?;
            eprintln!("deleted binding {host}");
        }
        BindingsCommand::Enable { host } => set_enabled(ctx, &api, &host, true).await?,
        BindingsCommand::Disable { host } => set_enabled(ctx, &api, &host, false).await?,
    }
    Ok(())
}

async fn set_enabled(ctx: &Ctx, api: &Api, host: &str, enabled: bool) -> anyhow::Result<()> {
    let path = format!("/api/v1/bindings/{}", segment(host)?);
    let body = json!({ "enabled": enabled });
    let answer = api.send(Method::PATCH, &path, Some(&body)).await?.body;
    ctx.show(&answer, |b: Binding| binding_table(vec![b]))?;
    eprintln!(
        "binding {host} {}",
        if enabled { "enabled" } else { "disabled" }
    );
    Ok(())
}

/// A storage token as the server describes it.
#[derive(Debug, Deserialize)]
struct StorageToken {
    id: String,
    surface: String,
    access: String,
    #[serde(default)]
    buckets: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    created_at_ms: i64,
    #[serde(default)]
    expires_at_ms: Option<i64>,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StorageTokenList {
    tokens: Vec<StorageToken>,
}

fn token_table(tokens: Vec<StorageToken>) -> Table {
    let mut t = Table::new(&[
        "ID", "NAME", "SURFACE", "ACCESS", "BUCKETS", "CREATED", "EXPIRES",
    ]);
    for tok in tokens {
        t.row(vec![
            tok.id,
            tok.name
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "-".into()),
            tok.surface,
            tok.access,
            tok.buckets.join(","),
            format_ms(tok.created_at_ms),
            format_opt_ms(tok.expires_at_ms, "never"),
        ]);
    }
    t
}

/// The body of `POST /api/v1/storage-tokens`.
fn token_request(
    surface: &str,
    access: &str,
    buckets: &[String],
    name: Option<&str>,
    expires_in_s: Option<i64>,
) -> anyhow::Result<Value> {
    if buckets.iter().any(|b| b == "*") && buckets.len() > 1 {
        bail!("--bucket '*' already means every bucket; do not list others with it");
    }
    if let Some(b) = buckets.iter().find(|b| b.trim().is_empty()) {
        bail!("invalid bucket name {b:?}");
    }
    let mut body = Map::new();
    body.insert("surface".into(), surface.into());
    body.insert("access".into(), access.into());
    body.insert("buckets".into(), buckets.into());
    if let Some(n) = name {
        body.insert("name".into(), n.into());
    }
    if let Some(s) = expires_in_s.filter(|s| *s > 0) {
        body.insert("expires_in_s".into(), s.into());
    }
    Ok(Value::Object(body))
}

/// Run a `storage-tokens` subcommand.
pub async fn tokens(ctx: &Ctx, cmd: StorageTokensCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        StorageTokensCommand::Create {
            surface,
            access,
            buckets,
            name,
            expires_in,
        } => {
            let body = token_request(
                surface.as_str(),
                access.as_str(),
                &buckets,
                name.as_deref(),
                expires_in,
            )?;
            let answer = api.post("/api/v1/storage-tokens", Some(&body)).await?;
            let created: StorageToken = parse(&answer)?;
            let Some(secret) = created.token.as_deref().filter(|s| !s.is_empty()) else {
                bail!(
                    "the server created storage token {} but did not return its secret",
                    created.id
                );
            };
            match ctx.format {
                Format::Json => output::print_json(&answer)?,
                Format::Table => output::print_stdout(&format!("{secret}\n"))?,
            }
            eprintln!(
                "created {} {} storage token {} for {}, expires {}; store the secret now: it is shown only once",
                created.surface,
                created.access,
                created.id,
                created.buckets.join(","),
                format_opt_ms(created.expires_at_ms, "never"),
            );
        }
        StorageTokensCommand::List => {
            let answer = api.get("/api/v1/storage-tokens").await?;
            ctx.show(&answer, |l: StorageTokenList| token_table(l.tokens))?;
        }
        StorageTokensCommand::Revoke { id } => {
            api.delete(&format!("/api/v1/storage-tokens/{}", segment(&id)?))
                .await?;
            eprintln!("revoked storage token {id}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_come_from_enabled_bindings_of_the_bucket() {
        let list: BindingList = parse(&json!({"bindings": [
            {"host": "www.a.test", "bucket": "site", "surface": "static", "enabled": true, "created_at_ms": 0},
            {"host": "old.a.test", "bucket": "site", "surface": "static", "enabled": false, "created_at_ms": 0},
            {"host": "b.test", "bucket": "other", "surface": "static", "enabled": true, "created_at_ms": 0},
            {"host": "a.test", "bucket": "site", "enabled": true, "created_at_ms": 0}
        ]}))
        .unwrap();
        assert_eq!(
            bucket_urls(&list.bindings, "site"),
            ["https://www.a.test/", "https://a.test/"]
        );
        assert!(bucket_urls(&list.bindings, "nope").is_empty());
    }

    #[test]
    fn token_requests_leave_out_what_was_not_given() {
        let b = token_request("kv", "read", &["*".into()], None, Some(0)).unwrap();
        assert_eq!(
            b,
            json!({"surface": "kv", "access": "read", "buckets": ["*"]})
        );
        let b = token_request("static", "admin", &["a".into()], Some("ci"), Some(60)).unwrap();
        assert_eq!(b["name"], "ci");
        assert_eq!(b["expires_in_s"], 60);
        assert!(token_request("kv", "read", &["*".into(), "a".into()], None, None).is_err());
    }

    #[test]
    fn bucket_lists_render() {
        let list: BucketList = parse(&json!({"buckets": [
            {"id": "b1", "name": "site", "surface": "static", "created_at_ms": 0,
             "active_deployment_id": "d1"},
            {"id": "b2", "name": "cache", "surface": "kv", "created_at_ms": 0,
             "active_deployment_id": null}
        ]}))
        .unwrap();
        assert_eq!(
            bucket_table(list.buckets).render(),
            "NAME   SURFACE  ACTIVE DEPLOYMENT  CREATED               ID\n\
             site   static   d1                 1970-01-01 00:00:00Z  b1\n\
             cache  kv       -                  1970-01-01 00:00:00Z  b2\n"
        );
    }
}
