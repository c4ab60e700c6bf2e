//! `lattice sso add|list|show|remove`: the org's single sign-on providers.

use serde::Deserialize;
use serde_json::json;

use super::{Ctx, parse, segment};
use crate::args::SsoCommand;
use crate::output::{Table, format_ms};

/// A provider as the server describes it.
#[derive(Debug, Deserialize)]
struct Provider {
    name: String,
    display_name: String,
    issuer: String,
    client_id: String,
    scopes: Vec<String>,
    username_claim: String,
    require_verified_email: bool,
    create_users: bool,
    redirect_url: String,
    created_at_ms: i64,
}

#[derive(Debug, Deserialize)]
struct ProviderList {
    providers: Vec<Provider>,
}

fn table(providers: Vec<Provider>) -> Table {
    let mut t = Table::new(&["NAME", "DISPLAY NAME", "ISSUER", "CLIENT ID", "CREATED"]);
    for p in providers {
        t.row(vec![
            p.name,
            p.display_name,
            p.issuer,
            p.client_id,
            format_ms(p.created_at_ms),
        ]);
    }
    t
}

fn detail(p: Provider) -> Table {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for (field, value) in [
        ("name", p.name),
        ("display name", p.display_name),
        ("issuer", p.issuer),
        ("client id", p.client_id),
        ("scopes", p.scopes.join(" ")),
        ("username claim", p.username_claim),
        (
            "require verified email",
            p.require_verified_email.to_string(),
        ),
        ("create users", p.create_users.to_string()),
        ("redirect url", p.redirect_url),
        ("created", format_ms(p.created_at_ms)),
    ] {
        t.row(vec![field.to_owned(), value]);
    }
    t
}

/// Run an `sso` subcommand.
pub async fn run(ctx: &Ctx, cmd: SsoCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        SsoCommand::Add {
            name,
            issuer,
            client_id,
            display_name,
            scopes,
            username_claim,
            allow_unverified_email,
            create_users,
            new_user_scopes,
            new_user_groups,
        } => {
            let secret = crate::prompt::secret(
                "client secret: ",
                "client secret",
                "LATTICE_SSO_CLIENT_SECRET",
            )?;
            let mut body = json!({"name": name, "issuer": issuer, "client_id": client_id,
                "client_secret": secret, "display_name": display_name.unwrap_or_default(),
                "username_claim": username_claim,
                "require_verified_email": !allow_unverified_email,
                "create_users": create_users, "new_user_scopes": new_user_scopes,
                "new_user_groups": new_user_groups});
            if !scopes.is_empty() {
                body["scopes"] = json!(scopes);
            }
            let answer = api.post("/api/v1/sso/providers", Some(&body)).await?;
            let p: Provider = parse(&answer)?;
            eprintln!(
                "added provider {}; register this redirect URL at the provider: {}",
                p.name, p.redirect_url
            );
            ctx.show(&answer, detail)?;
        }
        SsoCommand::List => {
            let body = api.get("/api/v1/sso/providers").await?;
            ctx.show(&body, |l: ProviderList| table(l.providers))?;
        }
        SsoCommand::Show { name } => {
            let body = api
                .get(&format!("/api/v1/sso/providers/{}", segment(&name)?))
                .await?;
            ctx.show(&body, detail)?;
        }
        SsoCommand::Remove { name } => {
            api.delete(&format!("/api/v1/sso/providers/{}", segment(&name)?))
                .await?;
            eprintln!("removed provider {name}");
        }
    }
    Ok(())
}
