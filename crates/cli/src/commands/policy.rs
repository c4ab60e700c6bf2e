//! `lattice policy list|get|apply|delete|validate`.

use std::path::Path;

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Ctx, parse, segment};
use crate::args::PolicyCommand;
use crate::output::{Table, format_ms};

/// A policy as the server describes it.
#[derive(Debug, Deserialize)]
struct Policy {
    name: String,
    policies: String,
    enabled: bool,
    priority: i64,
    #[serde(default)]
    description: String,
    expires_at: Option<String>,
    sha256: String,
    updated_at_ms: i64,
    updated_by: String,
}

#[derive(Debug, Deserialize)]
struct PolicyList {
    policies: Vec<Policy>,
}

#[derive(Debug, Deserialize)]
struct Problem {
    message: String,
    line: Option<u32>,
    column: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct Validation {
    valid: bool,
    problems: Vec<Problem>,
    statements: u32,
}

/// The seed's `CedarPolicy` document.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CedarPolicyDoc {
    #[serde(default)]
    kind: Option<String>,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Spec {
    policies: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    description: String,
    /// Accepted so the seed's documents read unchanged; this fleet has no
    /// hierarchy to propagate to.
    #[serde(default)]
    #[allow(dead_code)]
    propagate: Option<bool>,
    #[serde(default, alias = "expiresAt")]
    expires_at: Option<String>,
}

fn yes() -> bool {
    true
}

fn table(policies: Vec<Policy>) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "ENABLED",
        "PRIORITY",
        "EXPIRES",
        "UPDATED",
        "BY",
        "DESCRIPTION",
    ]);
    for p in policies {
        t.row(vec![
            p.name,
            p.enabled.to_string(),
            p.priority.to_string(),
            p.expires_at.unwrap_or_else(|| "-".into()),
            format_ms(p.updated_at_ms),
            p.updated_by,
            if p.description.is_empty() {
                "-".into()
            } else {
                p.description
            },
        ]);
    }
    t
}

fn detail(p: Policy) -> Table {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for (field, value) in [
        ("name", p.name),
        ("enabled", p.enabled.to_string()),
        ("priority", p.priority.to_string()),
        ("expires", p.expires_at.unwrap_or_else(|| "-".into())),
        ("description", p.description),
        ("sha256", p.sha256),
        ("updated", format_ms(p.updated_at_ms)),
        ("updated by", p.updated_by),
        ("policies", p.policies),
    ] {
        t.row(vec![field.to_owned(), value]);
    }
    t
}

/// The request body a file describes: the seed's YAML form, or plain Cedar for a
/// `.cedar` file (named by `name` or the file's stem).
fn body_of(path: &str, text: &str, name: Option<&str>) -> anyhow::Result<Value> {
    let cedar = Path::new(path)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("cedar"));
    if cedar {
        let name = match name {
            Some(n) => n.to_owned(),
            None => Path::new(path)
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_owned)
                .context("name the policy with --name")?,
        };
        return Ok(json!({"name": name, "policies": text}));
    }
    let doc: CedarPolicyDoc = serde_norway::from_str(text)
        .with_context(|| format!("{path}: not a CedarPolicy YAML document (or name it .cedar)"))?;
    if let Some(kind) = &doc.kind
        && kind != "CedarPolicy"
    {
        bail!("{path}: kind is {kind:?}, expected CedarPolicy");
    }
    let name = name.map_or(doc.metadata.name, str::to_owned);
    Ok(json!({
        "name": name,
        "policies": doc.spec.policies,
        "enabled": doc.spec.enabled,
        "priority": doc.spec.priority,
        "description": doc.spec.description,
        "expires_at": doc.spec.expires_at,
    }))
}

pub(super) fn read(path: &str) -> anyhow::Result<String> {
    if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("read stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("read {path}"))
    }
}

/// A Cedar entity from the short form (`user:alice`) or as written.
fn entity(text: &str) -> String {
    let quoted = |ty: &str, id: &str| format!("Lattice::{ty}::{}", Value::String(id.to_owned()));
    match text.split_once(':') {
        _ if text.starts_with("Lattice::") => text.to_owned(),
        Some(("user", id)) => quoted("User", id),
        Some(("group", id)) => quoted("Group", id),
        Some(("token", id)) => quoted("Service", &format!("token:{id}")),
        Some(("service", id)) => quoted("Service", id),
        Some(("node", id)) => quoted("Node", id),
        Some(("secret", id)) => quoted("SecretPath", id),
        Some(("plan", id)) => quoted("Plan", id),
        Some(("cluster", id)) => quoted("Cluster", id),
        _ => text.to_owned(),
    }
}

/// `KEY=VALUE` pairs as a JSON object (integers stay numbers).
fn context(pairs: &[String]) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--context {p:?}: write KEY=VALUE"))?;
        let value = v
            .parse::<i64>()
            .map_or_else(|_| Value::String(v.to_owned()), Value::from);
        out.insert(k.to_owned(), value);
    }
    Ok(Value::Object(out))
}

#[derive(Debug, Deserialize)]
struct DryRunFlip {
    principal: String,
    action: String,
    resource: String,
    context: Value,
    before: String,
    after: String,
    after_policies: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct DryRunReport {
    replayed: u32,
    allow_to_deny: u32,
    deny_to_allow: u32,
    flips: Vec<DryRunFlip>,
}

#[derive(Debug, Deserialize)]
struct Explanation {
    decision: String,
    determining: Vec<String>,
    considered: Vec<String>,
}

/// Run a `policy` subcommand.
pub async fn run(ctx: &Ctx, cmd: PolicyCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        PolicyCommand::List => {
            let body = api.get("/api/v1/policies").await?;
            ctx.show(&body, |l: PolicyList| table(l.policies))?;
        }
        PolicyCommand::Get { name } => {
            let body = api
                .get(&format!("/api/v1/policies/{}", segment(&name)?))
                .await?;
            ctx.show(&body, detail)?;
        }
        PolicyCommand::Apply {
            file,
            name,
            dry_run: true,
        } => {
            let body = body_of(&file, &read(&file)?, name.as_deref())?;
            let answer = api
                .post("/api/v1/policies/dry-run", Some(&json!({"put": [body]})))
                .await?;
            let r: DryRunReport = parse(&answer)?;
            eprintln!(
                "dry run: {} recorded decision(s) replayed; {} allow -> deny, {} deny -> allow (nothing stored)",
                r.replayed, r.allow_to_deny, r.deny_to_allow
            );
            ctx.show(&answer, |r: DryRunReport| {
                let mut t = Table::new(&[
                    "PRINCIPAL",
                    "ACTION",
                    "RESOURCE",
                    "CONTEXT",
                    "NOW",
                    "THEN",
                    "DECIDED BY THEN",
                ]);
                for f in r.flips {
                    t.row(vec![
                        f.principal,
                        f.action,
                        f.resource,
                        f.context.to_string(),
                        f.before,
                        f.after,
                        if f.after_policies.is_empty() {
                            "-".into()
                        } else {
                            f.after_policies.join(",")
                        },
                    ]);
                }
                t
            })?;
        }
        PolicyCommand::Apply { file, name, .. } => {
            let body = body_of(&file, &read(&file)?, name.as_deref())?;
            let name = body["name"].as_str().unwrap_or_default().to_owned();
            let reply = api
                .send(
                    Method::PUT,
                    &format!("/api/v1/policies/{}", segment(&name)?),
                    Some(&body),
                )
                .await?;
            let p: Policy = parse(&reply.body)?;
            eprintln!(
                "applied policy {} (sha256 {})",
                p.name,
                &p.sha256[..12.min(p.sha256.len())]
            );
            ctx.show(&reply.body, |p: Policy| table(vec![p]))?;
        }
        PolicyCommand::Delete { name } => {
            api.delete(&format!("/api/v1/policies/{}", segment(&name)?))
                .await?;
            eprintln!("deleted policy {name}");
        }
        PolicyCommand::Explain {
            principal,
            action,
            resource,
            context: pairs,
        } => {
            let body = json!({
                "principal": entity(&principal),
                "action": action,
                "resource": entity(&resource),
                "context": context(&pairs)?,
            });
            let answer = api.post("/api/v1/policies/explain", Some(&body)).await?;
            ctx.show(&answer, |e: Explanation| {
                let mut t = Table::new(&["FIELD", "VALUE"]);
                let list = |v: Vec<String>| {
                    if v.is_empty() {
                        "-".to_owned()
                    } else {
                        v.join(",")
                    }
                };
                t.row(vec!["decision".into(), e.decision]);
                t.row(vec!["determining".into(), list(e.determining)]);
                t.row(vec!["considered".into(), list(e.considered)]);
                t
            })?;
        }
        PolicyCommand::Validate { file } => {
            let body = body_of(&file, &read(&file)?, Some("candidate"))?;
            let answer = api
                .post(
                    "/api/v1/policies/validate",
                    Some(&json!({"policies": body["policies"]})),
                )
                .await?;
            let v: Validation = parse(&answer)?;
            if v.valid {
                eprintln!("{file}: valid ({} statement(s))", v.statements);
            } else {
                for p in &v.problems {
                    match (p.line, p.column) {
                        (Some(l), Some(c)) => eprintln!("{file}:{l}:{c}: {}", p.message),
                        _ => eprintln!("{file}: {}", p.message),
                    }
                }
                bail!("{file}: {} problem(s)", v.problems.len());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_yaml_and_plain_cedar_become_one_body() {
        let yaml = r#"
apiVersion: lattice.dev/v1alpha1
kind: CedarPolicy
metadata:
  name: deny-intern-prod
  namespace: lattice-system
spec:
  enabled: true
  priority: 200            # Higher priority = evaluated first
  propagate: true
  policies: |
    forbid(
      principal == Lattice::User::"intern",
      action,
      resource == Lattice::Node::"production"
    );
"#;
        let b = body_of("deny.yaml", yaml, None).unwrap();
        assert_eq!(b["name"], "deny-intern-prod");
        assert_eq!(b["priority"], 200);
        assert_eq!(b["enabled"], true);
        assert!(b["policies"].as_str().unwrap().starts_with("forbid("));
        let b = body_of(
            "dir/web-access.cedar",
            "permit(principal, action, resource);",
            None,
        )
        .unwrap();
        assert_eq!(b["name"], "web-access");
        assert!(
            body_of(
                "x.yaml",
                "kind: Deployment\nmetadata: {name: x}\nspec: {policies: p}",
                None
            )
            .is_err()
        );
        assert!(body_of("x.yaml", "not: [yaml", None).is_err());
    }

    #[test]
    fn short_entities_and_context_pairs() {
        assert_eq!(entity("user:alice"), r#"Lattice::User::"alice""#);
        assert_eq!(
            entity("token:deploy"),
            r#"Lattice::Service::"token:deploy""#
        );
        assert_eq!(entity("secret:app/db"), r#"Lattice::SecretPath::"app/db""#);
        assert_eq!(entity(r#"Lattice::Node::"n1""#), r#"Lattice::Node::"n1""#);
        assert_eq!(
            context(&["port=22".into(), "protocol=tcp".into()]).unwrap(),
            json!({"port": 22, "protocol": "tcp"})
        );
        assert!(context(&["port".into()]).is_err());
    }
}
