//! Single sign-on providers (OpenID Connect) per org: configured by an admin
//! (`users:admin`), checked by fetching the provider's discovery document when
//! saved, the client secret sealed at rest and never returned.

use lattice_core::audit::{Actor, Outcome};
use lattice_core::auth::RequestContext;
use lattice_core::time::now_ms;
use openidconnect::IssuerUrl;
use openidconnect::core::CoreProviderMetadata;
use sqlx::Row as _;

use super::{Identity, Result, require_scope};
use crate::error::IdentityError;

/// A provider as configured (the secret stays sealed in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoProvider {
    /// Id.
    pub id: String,
    /// Unique per org: in the login URLs.
    pub name: String,
    /// What the login button says.
    pub display_name: String,
    /// The issuer (as the provider names itself).
    pub issuer: String,
    /// The client registered at the provider.
    pub client_id: String,
    /// Scopes asked for (always with `openid`).
    pub scopes: Vec<String>,
    /// The claim that is the Lattice username (default `email`).
    pub username_claim: String,
    /// Refuse a login whose `email_verified` is not true.
    pub require_verified_email: bool,
    /// Create the user on first login (off: bind pre-created users only).
    pub create_users: bool,
    /// The scopes of users created on first login.
    pub new_user_scopes: Vec<String>,
    /// The groups users created on first login join.
    pub new_user_groups: Vec<String>,
    /// When, and by whom.
    pub created_at_ms: i64,
    pub created_by: String,
}

/// A provider to save.
#[derive(Debug, Clone)]
pub struct NewSsoProvider {
    pub name: String,
    pub display_name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub require_verified_email: bool,
    pub create_users: bool,
    pub new_user_scopes: Vec<String>,
    pub new_user_groups: Vec<String>,
}

macro_rules! sso_cols {
    () => {
        "id, name, display_name, issuer, client_id, scopes, username_claim, require_verified_email, create_users, created_at_ms, created_by, new_user_scopes, new_user_groups"
    };
}

fn provider(row: &sqlx::any::AnyRow) -> std::result::Result<SsoProvider, sqlx::Error> {
    let scopes: String = row.try_get("scopes")?;
    Ok(SsoProvider {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        display_name: row.try_get("display_name")?,
        issuer: row.try_get("issuer")?,
        client_id: row.try_get("client_id")?,
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        username_claim: row.try_get("username_claim")?,
        require_verified_email: row.try_get::<i64, _>("require_verified_email")? != 0,
        create_users: row.try_get::<i64, _>("create_users")? != 0,
        new_user_scopes: serde_json::from_str(&row.try_get::<String, _>("new_user_scopes")?)
            .unwrap_or_default(),
        new_user_groups: serde_json::from_str(&row.try_get::<String, _>("new_user_groups")?)
            .unwrap_or_default(),
        created_at_ms: row.try_get("created_at_ms")?,
        created_by: row.try_get("created_by")?,
    })
}

fn secret_aad(org: &str, name: &str) -> String {
    format!("identity.sso_providers.client_secret:{org}/{name}")
}

fn check(p: &NewSsoProvider) -> Result<()> {
    let slug = |s: &str| {
        !s.is_empty()
            && s.len() <= 40
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if !slug(&p.name) {
        return Err(IdentityError::invalid("name", "1-40 of a-z, 0-9 and -"));
    }
    if p.name == "cli" {
        return Err(IdentityError::invalid(
            "name",
            "\"cli\" is reserved (the CLI's login route)",
        ));
    }
    if p.display_name.is_empty()
        || p.display_name.len() > 100
        || p.display_name.chars().any(char::is_control)
    {
        return Err(IdentityError::invalid(
            "display_name",
            "1-100 printable characters",
        ));
    }
    match url::Url::parse(&p.issuer) {
        Ok(u)
            if (u.scheme() == "https"
                || (u.scheme() == "http"
                    && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))))
                && u.query().is_none()
                && u.fragment().is_none() => {}
        _ => {
            return Err(IdentityError::invalid(
                "issuer",
                "an https:// URL without query or fragment (http:// only on loopback)",
            ));
        }
    }
    if p.client_id.is_empty()
        || p.client_id.len() > 255
        || p.client_id.chars().any(char::is_control)
    {
        return Err(IdentityError::invalid(
            "client_id",
            "1-255 printable characters",
        ));
    }
    if p.client_secret.is_empty() || p.client_secret.len() > 1024 {
        return Err(IdentityError::invalid("client_secret", "1-1024 characters"));
    }
    if p.scopes.len() > 20
        || p.scopes
            .iter()
            .any(|s| s.is_empty() || s.len() > 100 || !s.chars().all(|c| c.is_ascii_graphic()))
    {
        return Err(IdentityError::invalid(
            "scopes",
            "at most 20 scope names without spaces",
        ));
    }
    if p.username_claim.is_empty()
        || p.username_claim.len() > 100
        || !p
            .username_claim
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(IdentityError::invalid(
            "username_claim",
            "a claim name such as email or preferred_username",
        ));
    }
    Ok(())
}

/// One request of `openidconnect`'s over our HTTP client.
pub(super) async fn send(
    http: reqwest::Client,
    req: openidconnect::HttpRequest,
) -> std::result::Result<openidconnect::HttpResponse, reqwest::Error> {
    let (parts, body) = req.into_parts();
    let resp = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await?;
    let mut out = http::Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        out = out.header(k, v);
    }
    let body = resp.bytes().await?.to_vec();
    Ok(out.body(body).expect("a response from its parts"))
}

/// The provider's discovery document, checked (issuer, endpoints, keys URL).
pub async fn discover(
    http: &reqwest::Client,
    issuer: &str,
) -> std::result::Result<CoreProviderMetadata, String> {
    let issuer_url = IssuerUrl::new(issuer.to_owned()).map_err(|e| format!("issuer: {e}"))?;
    let fetch = |req| send(http.clone(), req);
    CoreProviderMetadata::discover_async(issuer_url, &fetch)
        .await
        .map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        })
}

impl Identity {
    /// The client for providers.
    pub(crate) fn http(&self) -> Result<&reqwest::Client> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        let c = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| IdentityError::Unprocessable(format!("http client: {e}")))?;
        Ok(self.http.get_or_init(|| c))
    }

    /// Save a provider (`users:admin`): its discovery document must be fetched and
    /// valid (a 422 says what was fetched and what failed).
    pub async fn create_sso_provider(
        &self,
        ctx: &RequestContext,
        p: NewSsoProvider,
    ) -> Result<SsoProvider> {
        require_scope(&ctx.principal, "users:admin")?;
        check(&p)?;
        let org = ctx.principal.org_id.clone();
        // Users it creates get no more than the admin who configured it holds, and
        // join groups that exist.
        let new_user_scopes = super::validate_scopes(&p.new_user_scopes)
            .map_err(|_| IdentityError::invalid("new_user_scopes", "an unknown scope"))?;
        if !lattice_core::scope::all_covered(&ctx.principal.scopes, &new_user_scopes) {
            return Err(IdentityError::Forbidden(
                "new_user_scopes cannot exceed yours".into(),
            ));
        }
        if !p.create_users && (!new_user_scopes.is_empty() || !p.new_user_groups.is_empty()) {
            return Err(IdentityError::invalid(
                "new_user_scopes",
                "new_user_scopes and new_user_groups need create_users",
            ));
        }
        for g in &p.new_user_groups {
            let name = crate::input::GroupName::parse(g)?;
            if name.is_admins() {
                return Err(IdentityError::invalid(
                    "new_user_groups",
                    "users created by a provider cannot join admins",
                ));
            }
            if self
                .store
                .group_by_name(&org, name.as_str())
                .await?
                .is_none()
            {
                return Err(IdentityError::invalid(
                    "new_user_groups",
                    format!("no group {g:?} in this org"),
                ));
            }
        }
        let well_known = format!(
            "{}/.well-known/openid-configuration",
            p.issuer.trim_end_matches('/')
        );
        if let Err(why) = discover(self.http()?, &p.issuer).await {
            return Err(IdentityError::Unprocessable(format!(
                "issuer: fetched {well_known}: {why}"
            )));
        }
        let row = SsoProvider {
            id: uuid::Uuid::now_v7().to_string(),
            name: p.name.clone(),
            display_name: p.display_name.clone(),
            issuer: p.issuer.clone(),
            client_id: p.client_id.clone(),
            scopes: p.scopes.clone(),
            username_claim: p.username_claim.clone(),
            require_verified_email: p.require_verified_email,
            create_users: p.create_users,
            new_user_scopes,
            new_user_groups: p.new_user_groups.clone(),
            created_at_ms: now_ms(),
            created_by: ctx.principal.username.clone(),
        };
        let sealed = self
            .sealer
            .seal_text(&p.client_secret, &secret_aad(&org, &p.name));
        let inserted = sqlx::query(concat!(
            "INSERT INTO identity_sso_providers (",
            sso_cols!(),
            ", org_id, client_secret_sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ))
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.display_name)
        .bind(&row.issuer)
        .bind(&row.client_id)
        .bind(serde_json::to_string(&row.scopes).unwrap_or_default())
        .bind(&row.username_claim)
        .bind(i64::from(row.require_verified_email))
        .bind(i64::from(row.create_users))
        .bind(row.created_at_ms)
        .bind(&row.created_by)
        .bind(serde_json::to_string(&row.new_user_scopes).unwrap_or_default())
        .bind(serde_json::to_string(&row.new_user_groups).unwrap_or_default())
        .bind(&org)
        .bind(sealed)
        .execute(self.store.db().pool())
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if lattice_core::db::Db::is_unique_violation(&e) => {
                return Err(IdentityError::AlreadyExists(format!(
                    "sso provider {:?}",
                    p.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.audit(
            Actor::of(ctx),
            "sso.provider.create",
            &row.name,
            Outcome::Success,
            serde_json::json!({"issuer": row.issuer, "client_id": row.client_id,
                "create_users": row.create_users, "new_user_scopes": row.new_user_scopes,
                "new_user_groups": row.new_user_groups}),
        )
        .await;
        Ok(row)
    }

    /// The org's providers (`users:read`).
    pub async fn list_sso_providers(&self, ctx: &RequestContext) -> Result<Vec<SsoProvider>> {
        require_scope(&ctx.principal, "users:read")?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            sso_cols!(),
            " FROM identity_sso_providers WHERE org_id = $1 ORDER BY name"
        ))
        .bind(&ctx.principal.org_id)
        .fetch_all(self.store.db().pool())
        .await?;
        Ok(rows
            .iter()
            .map(provider)
            .collect::<std::result::Result<_, _>>()?)
    }

    /// One provider (`users:read`).
    pub async fn get_sso_provider(&self, ctx: &RequestContext, name: &str) -> Result<SsoProvider> {
        require_scope(&ctx.principal, "users:read")?;
        let row = sqlx::query(concat!(
            "SELECT ",
            sso_cols!(),
            " FROM identity_sso_providers WHERE org_id = $1 AND name = $2"
        ))
        .bind(&ctx.principal.org_id)
        .bind(name)
        .fetch_optional(self.store.db().pool())
        .await?
        .ok_or_else(|| IdentityError::NotFound(format!("sso provider {name:?}")))?;
        Ok(provider(&row)?)
    }

    /// Remove a provider (`users:admin`).
    pub async fn delete_sso_provider(&self, ctx: &RequestContext, name: &str) -> Result<()> {
        require_scope(&ctx.principal, "users:admin")?;
        let done =
            sqlx::query("DELETE FROM identity_sso_providers WHERE org_id = $1 AND name = $2")
                .bind(&ctx.principal.org_id)
                .bind(name)
                .execute(self.store.db().pool())
                .await?;
        if done.rows_affected() == 0 {
            return Err(IdentityError::NotFound(format!("sso provider {name:?}")));
        }
        self.audit(
            Actor::of(ctx),
            "sso.provider.delete",
            name,
            Outcome::Success,
            serde_json::json!({}),
        )
        .await;
        Ok(())
    }
}
