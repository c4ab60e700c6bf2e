//! `lattice users create|list|unlock`.

use anyhow::bail;
use serde::Deserialize;
use serde_json::json;

use super::{Ctx, parse, segment};
use crate::args::UsersCommand;
use crate::client::Api;
use crate::output::{Table, format_ms, format_opt_ms, scopes_cell};
use crate::prompt;

/// A user as the server describes them.
#[derive(Debug, Deserialize)]
struct User {
    id: String,
    username: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    totp_enabled: bool,
    created_at_ms: i64,
    locked_until_ms: Option<i64>,
    #[serde(default)]
    disabled: bool,
}

#[derive(Debug, Deserialize)]
struct UserList {
    users: Vec<User>,
}

fn table(users: Vec<User>) -> Table {
    let mut t = Table::new(&[
        "ID",
        "USERNAME",
        "SCOPES",
        "TOTP",
        "CREATED",
        "LOCKED UNTIL",
        "DISABLED",
    ]);
    for u in users {
        t.row(vec![
            u.id,
            u.username,
            scopes_cell(&u.scopes),
            if u.totp_enabled { "on" } else { "off" }.to_owned(),
            format_ms(u.created_at_ms),
            format_opt_ms(u.locked_until_ms, "-"),
            if u.disabled { "yes" } else { "" }.to_owned(),
        ]);
    }
    t
}

/// Whether `text` looks like a server-issued id (a UUID) rather than a username.
fn looks_like_id(text: &str) -> bool {
    text.len() == 36
        && text.chars().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// The id of a user given by id or username.
async fn resolve(api: &Api, user: &str) -> anyhow::Result<String> {
    if looks_like_id(user) {
        return Ok(user.to_owned());
    }
    let list: UserList = parse(&api.get("/api/v1/users").await?)?;
    let wanted = user.to_lowercase();
    match list.users.into_iter().find(|u| u.username == wanted) {
        Some(u) => Ok(u.id),
        None => bail!("no user named {user:?}"),
    }
}

/// Run a `users` subcommand.
pub async fn run(ctx: &Ctx, cmd: UsersCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        UsersCommand::Create { username, scopes } => {
            let password = prompt::new_password(&username)?;
            let body = json!({ "username": username, "password": password, "scopes": scopes });
            let answer = api.post("/api/v1/users", Some(&body)).await?;
            let created: User = parse(&answer)?;
            eprintln!("created user {} ({})", created.username, created.id);
            ctx.show(&answer, |u: User| table(vec![u]))?;
        }
        UsersCommand::List => {
            let body = api.get("/api/v1/users").await?;
            ctx.show(&body, |l: UserList| table(l.users))?;
        }
        UsersCommand::Unlock { user } => {
            let id = resolve(&api, &user).await?;
            let path = format!("/api/v1/users/{}/unlock", segment(&id)?);
            let answer = api.post(&path, None).await?;
            ctx.show(&answer, |u: User| table(vec![u]))?;
            eprintln!("unlocked user {user}");
        }
        UsersCommand::Disable { user } => {
            let id = resolve(&api, &user).await?;
            let answer = api
                .post(&format!("/api/v1/users/{}/disable", segment(&id)?), None)
                .await?;
            ctx.show(&answer, |u: User| table(vec![u]))?;
            eprintln!("disabled user {user}");
        }
        UsersCommand::Enable { user } => {
            let id = resolve(&api, &user).await?;
            let answer = api
                .post(&format!("/api/v1/users/{}/enable", segment(&id)?), None)
                .await?;
            ctx.show(&answer, |u: User| table(vec![u]))?;
            eprintln!("enabled user {user}");
        }
        UsersCommand::Scopes { user, scopes } => {
            let id = resolve(&api, &user).await?;
            let answer = api
                .send(
                    reqwest::Method::PUT,
                    &format!("/api/v1/users/{}/scopes", segment(&id)?),
                    Some(&serde_json::json!({"scopes": scopes})),
                )
                .await?
                .body;
            ctx.show(&answer, |u: User| table(vec![u]))?;
        }
        UsersCommand::Remove { user } => {
            let id = resolve(&api, &user).await?;
            api.delete(&format!("/api/v1/users/{}/membership", segment(&id)?))
                .await?;
            eprintln!("removed {user} from this org");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_told_apart() {
        assert!(looks_like_id("0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"));
        assert!(!looks_like_id("admin"));
        assert!(!looks_like_id("0193a1b2x7c3d-7e4f-8a9b-0c1d2e3f4a5b"));
    }

    #[test]
    fn user_lists_render() {
        let body = json!({"users": [{
            "id": "u1", "username": "ops", "org_id": "o1", "scopes": ["kv:read", "nodes:read"],
            "totp_enabled": true, "created_at_ms": 0, "locked_until_ms": null, "disabled": true
        }]});
        let list: UserList = parse(&body).unwrap();
        assert_eq!(
            table(list.users).render(),
            "ID  USERNAME  SCOPES              TOTP  CREATED               LOCKED UNTIL  DISABLED\n\
             u1  ops       kv:read,nodes:read  on    1970-01-01 00:00:00Z  -             yes\n"
        );
    }
}
