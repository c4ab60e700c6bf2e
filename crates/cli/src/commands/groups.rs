//! `lattice groups list|get|create|delete|add-member|remove-member`.

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::{Ctx, parse, segment};
use crate::args::GroupsCommand;
use crate::output::{Table, format_ms};

/// A group as the server describes it (`members` only when one group is shown).
#[derive(Debug, Deserialize)]
struct Group {
    name: String,
    #[serde(default)]
    description: String,
    member_count: i64,
    members: Option<Vec<String>>,
    created_at_ms: i64,
}

#[derive(Debug, Deserialize)]
struct GroupList {
    groups: Vec<Group>,
}

fn table(groups: Vec<Group>) -> Table {
    let mut t = Table::new(&["NAME", "MEMBERS", "DESCRIPTION", "CREATED"]);
    for g in groups {
        t.row(vec![
            g.name,
            g.member_count.to_string(),
            if g.description.is_empty() {
                "-".to_owned()
            } else {
                g.description
            },
            format_ms(g.created_at_ms),
        ]);
    }
    t
}

/// One group, field by field (members comma-separated).
fn detail(g: Group) -> Table {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    let members = g.members.unwrap_or_default();
    for (field, value) in [
        ("name", g.name),
        ("description", g.description),
        ("member count", g.member_count.to_string()),
        ("members", members.join(",")),
        ("created", format_ms(g.created_at_ms)),
    ] {
        t.row(vec![field.to_owned(), value]);
    }
    t
}

/// `/api/v1/groups/{name}/members/{user}`.
fn member_path(name: &str, user: &str) -> anyhow::Result<String> {
    Ok(format!(
        "/api/v1/groups/{}/members/{}",
        segment(name)?,
        segment(user)?
    ))
}

/// Run a `groups` subcommand.
pub async fn run(ctx: &Ctx, cmd: GroupsCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        GroupsCommand::List => {
            let body = api.get("/api/v1/groups").await?;
            ctx.show(&body, |l: GroupList| table(l.groups))?;
        }
        GroupsCommand::Get { name } => {
            let body = api
                .get(&format!("/api/v1/groups/{}", segment(&name)?))
                .await?;
            ctx.show(&body, detail)?;
        }
        GroupsCommand::Create { name, description } => {
            let body = json!({ "name": name, "description": description });
            let answer = api.post("/api/v1/groups", Some(&body)).await?;
            let created: Group = parse(&answer)?;
            eprintln!("created group {}", created.name);
            ctx.show(&answer, |g: Group| table(vec![g]))?;
        }
        GroupsCommand::Delete { name } => {
            api.delete(&format!("/api/v1/groups/{}", segment(&name)?))
                .await?;
            eprintln!("deleted group {name}");
        }
        GroupsCommand::AddMember { name, user } => {
            api.send(Method::PUT, &member_path(&name, &user)?, None)
                .await?;
            eprintln!("{user} is a member of group {name}");
        }
        GroupsCommand::RemoveMember { name, user } => {
            api.delete(&member_path(&name, &user)?).await?;
            eprintln!("removed {user} from group {name}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_lists_render() {
        let body = json!({"groups": [
            {"id": "g1", "name": "admins", "description": "Administrators of the org",
             "member_count": 1, "created_at_ms": 0, "updated_at_ms": 0},
            {"id": "g2", "name": "ops", "description": "", "member_count": 0,
             "created_at_ms": 0, "updated_at_ms": 0}
        ]});
        let list: GroupList = parse(&body).unwrap();
        assert_eq!(
            table(list.groups).render(),
            "NAME    MEMBERS  DESCRIPTION                CREATED\n\
             admins  1        Administrators of the org  1970-01-01 00:00:00Z\n\
             ops     0        -                          1970-01-01 00:00:00Z\n"
        );
    }

    #[test]
    fn one_group_renders_field_by_field() {
        let body = json!({"id": "g1", "name": "ops", "description": "Runs the fleet",
            "member_count": 2, "members": ["bob", "carol"], "created_at_ms": 0, "updated_at_ms": 0});
        assert_eq!(
            detail(parse(&body).unwrap()).render(),
            "FIELD         VALUE\n\
             name          ops\n\
             description   Runs the fleet\n\
             member count  2\n\
             members       bob,carol\n\
             created       1970-01-01 00:00:00Z\n"
        );
    }

    #[test]
    fn member_paths_are_escaped() {
        assert_eq!(
            member_path("ops", "a@b.c").unwrap(),
            "/api/v1/groups/ops/members/a%40b.c"
        );
        assert!(member_path("..", "bob").is_err());
    }
}
