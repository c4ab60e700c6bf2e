//! `lattice static deploy|rollback|deployments|ls|put|rm`.

use std::path::Path;

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde::Deserialize;

use super::archive::{build_archive, content_type};
use super::storage::served_at;
use super::upload::{human_bytes, upload};
use super::{Ctx, parse, segment, slash_path};
use crate::args::StaticCommand;
use crate::client::Api;
use crate::output::{self, Format, Table, format_ms};

/// A deployment as the server describes it.
#[derive(Debug, Clone, Deserialize)]
struct Deployment {
    id: String,
    created_at_ms: i64,
    #[serde(default)]
    file_count: u64,
    #[serde(default)]
    total_bytes: u64,
    #[serde(default)]
    active: bool,
    #[serde(default)]
    created_by: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeploymentList {
    deployments: Vec<Deployment>,
}

/// One file of a deployment.
#[derive(Debug, Deserialize)]
struct Object {
    path: String,
    #[serde(default)]
    sha256: String,
    size: u64,
    #[serde(default)]
    content_type: String,
}

#[derive(Debug, Deserialize)]
struct ObjectList {
    #[serde(default)]
    deployment_id: Option<String>,
    objects: Vec<Object>,
}

fn deployment_table(deployments: Vec<Deployment>) -> Table {
    let mut t = Table::new(&["ID", "CREATED", "FILES", "SIZE", "ACTIVE", "CREATED BY"]);
    for d in deployments {
        t.row(vec![
            d.id,
            format_ms(d.created_at_ms),
            d.file_count.to_string(),
            human_bytes(d.total_bytes),
            if d.active { "*" } else { "" }.to_owned(),
            d.created_by.unwrap_or_default(),
        ]);
    }
    t
}

fn object_table(objects: Vec<Object>) -> Table {
    let mut t = Table::new(&["PATH", "SIZE", "TYPE", "SHA256"]);
    for o in objects {
        t.row(vec![
            o.path,
            o.size.to_string(),
            o.content_type,
            o.sha256.chars().take(12).collect(),
        ]);
    }
    t
}

/// For a rollback without `--to`: the active deployment and the one created just
/// before it. Ties in creation time keep the server's (newest-first) order.
fn rollback_target(deployments: &[Deployment]) -> anyhow::Result<(&Deployment, &Deployment)> {
    let mut by_age: Vec<&Deployment> = deployments.iter().collect();
    by_age.sort_by_key(|d| std::cmp::Reverse(d.created_at_ms));
    let Some(pos) = by_age.iter().position(|d| d.active) else {
        bail!("no deployment is active; pick one with --to DEPLOYMENT_ID");
    };
    match (by_age.get(pos), by_age.get(pos + 1)) {
        (Some(active), Some(previous)) => Ok((active, previous)),
        (Some(active), None) => bail!(
            "deployment {} is the oldest one; there is nothing earlier to roll back to",
            active.id
        ),
        _ => bail!("no deployment is active; pick one with --to DEPLOYMENT_ID"),
    }
}

fn base(bucket: &str) -> anyhow::Result<String> {
    Ok(format!("/api/v1/static/{}", segment(bucket)?))
}

/// A path on the site: a leading `/` is optional; no empty, `.` or `..` segments.
fn remote_path(path: &str) -> anyhow::Result<String> {
    slash_path(path.strip_prefix('/').unwrap_or(path), "site path", false)
}

/// Run a `static` subcommand.
pub async fn run(ctx: &Ctx, cmd: StaticCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        StaticCommand::Deploy {
            dir,
            bucket,
            no_activate,
        } => deploy(ctx, &api, &dir, &bucket, !no_activate).await,
        StaticCommand::Rollback { bucket, to } => {
            let base = base(&bucket)?;
            let (target, previous) = match to {
                Some(id) => (id, None),
                None => {
                    let list: DeploymentList =
                        parse(&api.get(&format!("{base}/deployments")).await?)?;
                    let (active, target) = rollback_target(&list.deployments)?;
                    (target.id.clone(), Some(active.id.clone()))
                }
            };
            let path = format!("{base}/deployments/{}/activate", segment(&target)?);
            let answer = api.post(&path, None).await?;
            let activated: Deployment = parse(&answer)?;
            ctx.show(&answer, |d: Deployment| deployment_table(vec![d]))?;
            let was = previous
                .map(|p| format!("; it replaces {p}"))
                .unwrap_or_default();
            eprintln!(
                "activated deployment {} of bucket {bucket} (created {}, {} files){was}",
                activated.id,
                format_ms(activated.created_at_ms),
                activated.file_count,
            );
            Ok(())
        }
        StaticCommand::Deployments { bucket } => {
            let answer = api.get(&format!("{}/deployments", base(&bucket)?)).await?;
            ctx.show(&answer, |l: DeploymentList| deployment_table(l.deployments))
        }
        StaticCommand::Ls { bucket } => {
            let answer = api.get(&format!("{}/objects", base(&bucket)?)).await?;
            let list: ObjectList = parse(&answer)?;
            match &list.deployment_id {
                Some(id) => eprintln!("deployment {id}: {} files", list.objects.len()),
                None => eprintln!("bucket {bucket} has no active deployment"),
            }
            ctx.show(&answer, |l: ObjectList| object_table(l.objects))
        }
        StaticCommand::Put {
            bucket,
            local_file,
            remote_path: remote,
        } => {
            let url = format!("{}/objects/{}", base(&bucket)?, remote_path(&remote)?);
            let data = std::fs::read(&local_file)
                .with_context(|| format!("cannot read {}", local_file.display()))?;
            let mut kind = content_type(&remote);
            if kind == "application/octet-stream" {
                kind = content_type(&local_file.to_string_lossy());
            }
            let reply = upload(&api, Method::PUT, &url, kind, &data).await?;
            changed(
                ctx,
                &reply.body,
                &format!("uploaded /{}", remote.trim_start_matches('/')),
            )
        }
        StaticCommand::Rm {
            bucket,
            remote_path: remote,
        } => {
            let url = format!("{}/objects/{}", base(&bucket)?, remote_path(&remote)?);
            let reply = api.send(Method::DELETE, &url, None).await?;
            changed(
                ctx,
                &reply.body,
                &format!("removed /{}", remote.trim_start_matches('/')),
            )
        }
    }
}

/// Show the deployment a one-file change produced.
fn changed(ctx: &Ctx, answer: &serde_json::Value, what: &str) -> anyhow::Result<()> {
    let d: Deployment = parse(answer)?;
    ctx.show(answer, |d: Deployment| deployment_table(vec![d]))?;
    let state = if d.active { "active" } else { "not active" };
    eprintln!("{what}: deployment {} ({state})", d.id);
    Ok(())
}

async fn deploy(
    ctx: &Ctx,
    api: &Api,
    dir: &Path,
    bucket: &str,
    activate: bool,
) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let archive = build_archive(dir, &mut |w| eprintln!("warning: {w}"))?;
    eprintln!(
        "packed {} files ({}) into {}",
        archive.files,
        human_bytes(archive.bytes),
        human_bytes(u64::try_from(archive.gz.len()).unwrap_or(u64::MAX)),
    );
    let mut path = format!("{}/deployments", base(bucket)?);
    if !activate {
        path.push_str("?activate=false");
    }
    let reply = upload(api, Method::POST, &path, "application/gzip", &archive.gz).await?;
    let d: Deployment = parse(&reply.body)?;
    match ctx.format {
        Format::Json => output::print_json(&reply.body)?,
        Format::Table => output::print_stdout(&format!("{}\n", d.id))?,
    }
    eprintln!(
        "deployment {} of bucket {bucket}: {} files, {}, {}",
        d.id,
        d.file_count,
        human_bytes(d.total_bytes),
        if d.active { "active" } else { "not active" }
    );
    if !d.active {
        eprintln!(
            "activate it with: lattice static rollback --bucket {bucket} --to {}",
            d.id
        );
    }
    match served_at(api, bucket).await {
        Ok(urls) if urls.is_empty() => eprintln!(
            "no enabled binding serves bucket {bucket}; add one with: lattice bindings create HOST --bucket {bucket}"
        ),
        Ok(urls) => {
            let note = if d.active {
                ""
            } else {
                " (still the previous deployment)"
            };
            for url in urls {
                eprintln!("served at {url}{note}");
            }
        }
        Err(e) => eprintln!("warning: cannot list the bindings of bucket {bucket}: {e:#}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn list(items: serde_json::Value) -> Vec<Deployment> {
        parse::<DeploymentList>(&json!({ "deployments": items }))
            .unwrap()
            .deployments
    }

    #[test]
    fn rollback_picks_the_deployment_before_the_active_one() {
        let ds = list(json!([
            {"id": "d4", "created_at_ms": 400, "active": false},
            {"id": "d3", "created_at_ms": 300, "active": true},
            {"id": "d2", "created_at_ms": 200, "active": false},
            {"id": "d1", "created_at_ms": 100, "active": false}
        ]));
        let (active, target) = rollback_target(&ds).unwrap();
        assert_eq!((active.id.as_str(), target.id.as_str()), ("d3", "d2"));
    }

    #[test]
    fn rollback_sorts_by_creation_not_list_order() {
        let ds = list(json!([
            {"id": "d1", "created_at_ms": 100, "active": false},
            {"id": "d3", "created_at_ms": 300, "active": true},
            {"id": "d2", "created_at_ms": 200, "active": false},
            {"id": "d2b", "created_at_ms": 200, "active": false}
        ]));
        let (_, target) = rollback_target(&ds).unwrap();
        assert_eq!(target.id, "d2");
    }

    #[test]
    fn rollback_needs_an_active_and_an_older_deployment() {
        let oldest = list(json!([
            {"id": "d2", "created_at_ms": 200, "active": false},
            {"id": "d1", "created_at_ms": 100, "active": true}
        ]));
        let err = rollback_target(&oldest).unwrap_err().to_string();
        assert!(err.contains("oldest"), "{err}");
        let none = list(json!([{"id": "d1", "created_at_ms": 100, "active": false}]));
        assert!(
            rollback_target(&none)
                .unwrap_err()
                .to_string()
                .contains("--to")
        );
        assert!(rollback_target(&[]).is_err());
    }

    #[test]
    fn remote_paths_are_checked() {
        assert_eq!(remote_path("/assets/a b.js").unwrap(), "assets/a%20b.js");
        assert_eq!(remote_path("index.html").unwrap(), "index.html");
        for bad in ["", "/", "a//b", "a/", "../x", "a/./b"] {
            assert!(remote_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deployments_render() {
        let ds = list(json!([{"id": "d1", "bucket": "site", "created_at_ms": 0,
            "file_count": 3, "total_bytes": 2048, "active": true, "created_by": "admin"}]));
        assert_eq!(
            deployment_table(ds).render(),
            "ID  CREATED               FILES  SIZE     ACTIVE  CREATED BY\n\
             d1  1970-01-01 00:00:00Z  3      2.0 KiB  *       admin\n"
        );
    }
}
