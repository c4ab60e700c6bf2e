//! `lattice token create|list|revoke`.

use serde::Deserialize;
use serde_json::json;

use super::{Ctx, parse, segment};
use crate::args::TokenCommand;
use crate::output::{self, Format, Table, format_ms, format_opt_ms, scopes_cell};

/// A token as the server lists it.
#[derive(Debug, Deserialize)]
struct Token {
    id: String,
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    user_id: String,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
    last_used_at_ms: Option<i64>,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenList {
    tokens: Vec<Token>,
}

fn table(tokens: Vec<Token>) -> Table {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "SCOPES",
        "USER",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ]);
    for tok in tokens {
        t.row(vec![
            tok.id,
            tok.name,
            scopes_cell(&tok.scopes),
            tok.user_id,
            format_ms(tok.created_at_ms),
            format_opt_ms(tok.expires_at_ms, "never"),
            format_opt_ms(tok.last_used_at_ms, "never"),
        ]);
    }
    t
}

/// Run a `token` subcommand.
pub async fn run(ctx: &Ctx, cmd: TokenCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        TokenCommand::Create {
            name,
            scopes,
            expires_in,
        } => {
            let body = json!({ "name": name, "scopes": scopes, "expires_in_s": expires_in });
            let answer = api.post("/api/v1/tokens", Some(&body)).await?;
            let created: Token = parse(&answer)?;
            let Some(secret) = created.token.as_deref().filter(|s| !s.is_empty()) else {
                anyhow::bail!(
                    "the server created token {} but did not return its secret",
                    created.id
                );
            };
            match ctx.format {
                Format::Json => output::print_json(&answer)?,
                Format::Table => output::print_stdout(&format!("{secret}\n"))?,
            }
            eprintln!(
                "created token {} ({}), expires {}; store the secret now: it will not be shown again",
                created.name,
                created.id,
                format_opt_ms(created.expires_at_ms, "never"),
            );
            Ok(())
        }
        TokenCommand::List => {
            let body = api.get("/api/v1/tokens").await?;
            ctx.show(&body, |l: TokenList| table(l.tokens))
        }
        TokenCommand::Revoke { id } => {
            api.delete(&format!("/api/v1/tokens/{}", segment(&id)?))
                .await?;
            eprintln!("revoked token {id}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists_render() {
        let body = json!({"tokens": [{
            "id": "t1", "name": "cli@box", "scopes": ["*"], "user_id": "u1",
            "created_at_ms": 0, "expires_at_ms": null, "last_used_at_ms": 86_400_000
        }]});
        let list: TokenList = parse(&body).unwrap();
        let text = table(list.tokens).render();
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("ID  NAME     SCOPES  USER")
        );
        assert_eq!(
            lines.next().unwrap(),
            "t1  cli@box  *       u1    1970-01-01 00:00:00Z  never    1970-01-02 00:00:00Z"
        );
    }
}
