//! The OpenAPI document, assembled from the handlers' annotations.
//!
//! Every operation lists every status it can answer. A handler's annotation lists
//! what is particular to it (404, 409, 412, 429, a 403 from a scope check on a read,
//! a 400 from a field's validation); [`ErrorResponses`] adds what follows from what
//! the operation is:
//!
//! - authenticated (every operation without `security(())`): 401 no valid credential,
//!   500, 503 (a backing service unreachable or not configured, the request timeout),
//!   and for a method other than GET/HEAD/OPTIONS 403 (a cookie-authenticated call
//!   without its `X-CSRF-Token`, and the scope checks of writes);
//! - a JSON request body ([`crate::json::ApiJson`]): 400 malformed JSON or no
//!   `Content-Type: application/json`, 413 over `gateway.body_limit_bytes`, 422 the
//!   wrong shape;
//! - path or query parameters ([`crate::extract`]): 400 for a parameter that does not
//!   parse (an unknown query parameter among them).
//!
//! Every error answer's body is [`ErrorBody`](crate::error::ErrorBody).

use utoipa::openapi::path::{HttpMethod, Operation, ParameterIn};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema as _};

use crate::routes;

/// Every REST route.
#[derive(OpenApi)]
#[openapi(
    info(title = "Lattice API", description = "The Lattice control plane's REST API. Errors are {\"error\":{\"code\",\"message\"}}."),
    paths(
        routes::system::health,
        routes::system::ready,
        routes::system::metrics,
        routes::system::openapi,
        routes::auth::login,
        routes::auth::login_totp,
        routes::auth::logout,
        routes::auth::me,
        routes::auth::change_password,
        routes::auth::totp_enroll,
        routes::auth::totp_confirm,
        routes::auth::totp_disable,
        routes::tokens::create,
        routes::tokens::list,
        routes::tokens::revoke,
        routes::users::create,
        routes::users::list,
        routes::users::unlock,
        routes::users::disable,
        routes::users::enable,
        routes::users::set_password,
        routes::groups::list,
        routes::groups::create,
        routes::groups::get,
        routes::groups::delete,
        routes::groups::add_member,
        routes::groups::remove_member,
        crate::storage::control::create_bucket,
        crate::storage::control::list_buckets,
        crate::storage::control::delete_bucket,
        crate::storage::control::kv_put,
        crate::storage::control::kv_get,
        crate::storage::control::kv_delete,
        crate::storage::control::kv_list,
        crate::storage::control::create_binding,
        crate::storage::control::list_bindings,
        crate::storage::control::delete_binding,
        crate::storage::control::patch_binding,
        crate::storage::control::create_storage_token,
        crate::storage::control::list_storage_tokens,
        crate::storage::control::revoke_storage_token,
        crate::storage::sites::deploy,
        crate::storage::sites::list_deployments,
        crate::storage::sites::activate,
        crate::storage::sites::put_object,
        crate::storage::sites::delete_object,
        crate::storage::sites::list_objects,
        routes::tasks::create,
        routes::tasks::list,
        routes::tasks::get,
        routes::tasks::cancel,
        routes::tasks::audit,
        routes::tasks::verify,
        routes::nodes::create_join_token,
        routes::nodes::list,
        routes::nodes::get,
        routes::nodes::patch,
        routes::nodes::delete,
        routes::nodes::reconnect,
        routes::nodes::metrics,
        routes::nodes::logs,
        routes::nodes::fleet_metrics,
        routes::nodes::proxy_doc,
        routes::nodes::port_forward,
        routes::policies::list,
        routes::policies::create,
        routes::policies::get,
        routes::policies::put,
        routes::policies::delete,
        routes::policies::validate,
        routes::policies::explain,
        routes::policies::dry_run,
        routes::changes::list_intents,
        routes::changes::put_intent,
        routes::changes::get_intent,
        routes::changes::replace_intent,
        routes::changes::delete_intent,
        routes::changes::intent_history,
        routes::changes::list_plans,
        routes::changes::create_plan,
        routes::changes::get_plan,
        routes::changes::approve_plan,
        routes::changes::reject_plan,
        routes::changes::cancel_plan,
        routes::releases::upload,
        routes::releases::list,
        routes::releases::get,
        routes::sso::create,
        routes::sso::list,
        routes::sso::get,
        routes::sso::delete,
        routes::sso::sign_in_providers,
        routes::sso::start,
        routes::sso::callback,
        routes::sso::cli_exchange,
        routes::orgs::list,
        routes::orgs::create,
        routes::orgs::get,
        routes::orgs::update,
        routes::orgs::delete,
        routes::orgs::mine,
        routes::orgs::invite,
        routes::orgs::accept,
        routes::orgs::set_scopes,
        routes::orgs::remove_member,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&Security, &ErrorResponses),
    security(("bearer" = []), ("session" = []))
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "lattice_session",
                "Session cookie from /api/v1/auth/login; state-changing requests also need X-CSRF-Token",
            ))),
        );
    }
}

/// Adds the error statuses that follow from what an operation is (see the module
/// documentation), unless its annotation already lists them.
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for (method, operation) in [
                (HttpMethod::Get, &mut item.get),
                (HttpMethod::Put, &mut item.put),
                (HttpMethod::Post, &mut item.post),
                (HttpMethod::Delete, &mut item.delete),
                (HttpMethod::Options, &mut item.options),
                (HttpMethod::Head, &mut item.head),
                (HttpMethod::Patch, &mut item.patch),
                (HttpMethod::Trace, &mut item.trace),
            ] {
                if let Some(operation) = operation {
                    for (status, description) in implied_errors(&method, operation) {
                        operation
                            .responses
                            .responses
                            .entry(status.to_owned())
                            .or_insert_with(|| error_response(description));
                    }
                }
            }
        }
    }
}

/// Whether the operation takes no credential (`security(())` on its annotation).
pub(crate) fn is_public(operation: &Operation) -> bool {
    operation
        .security
        .as_ref()
        .is_some_and(|s| s.contains(&SecurityRequirement::default()))
}

/// The statuses `operation` answers for being what it is, with their descriptions.
fn implied_errors(method: &HttpMethod, operation: &Operation) -> Vec<(&'static str, &'static str)> {
    let mut errors = Vec::new();
    let json_body = operation
        .request_body
        .as_ref()
        .is_some_and(|b| b.content.keys().any(|t| t == "application/json"));
    let parsed_params = operation
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query));
    if json_body {
        errors.push((
            "400",
            "Malformed JSON, no `Content-Type: application/json`, or an invalid field value",
        ));
    } else if parsed_params {
        errors.push((
            "400",
            "A path or query parameter that does not parse (such as an unknown query parameter), or an invalid value",
        ));
    }
    if !is_public(operation) {
        errors.push((
            "401",
            "No valid credential: send a bearer token or a session cookie",
        ));
        if !matches!(
            method,
            HttpMethod::Get | HttpMethod::Head | HttpMethod::Options
        ) {
            errors.push((
                "403",
                "A missing scope, or a cookie-authenticated request without its `X-CSRF-Token`",
            ));
        }
    }
    if json_body {
        errors.push(("413", "The body is larger than `gateway.body_limit_bytes`"));
        errors.push((
            "422",
            "Well-formed JSON of the wrong shape: a wrong type, an unknown or a missing field",
        ));
    }
    if !is_public(operation) {
        errors.push(("500", "Internal error (details in the server log)"));
        errors.push((
            "503",
            "A backing service is unreachable or not configured on this gateway, or the request took too long; retry later",
        ));
    }
    errors
}

/// An error answer: `description`, with an [`ErrorBody`](crate::error::ErrorBody).
fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(crate::error::ErrorBody::name())))
                    .build(),
            )
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the document, as (method, path, operation).
    fn operations(doc: &utoipa::openapi::OpenApi) -> Vec<(&'static str, String, Operation)> {
        let mut out = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, operation) in [
                ("GET", &item.get),
                ("PUT", &item.put),
                ("POST", &item.post),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ] {
                if let Some(operation) = operation {
                    out.push((method, path.clone(), operation.clone()));
                }
            }
        }
        out
    }

    fn schema_of(response: &RefOr<utoipa::openapi::Response>) -> Option<String> {
        let RefOr::T(response) = response else {
            return None;
        };
        let content = response.content.get("application/json")?;
        match content.schema.as_ref()? {
            RefOr::Ref(r) => Some(r.ref_location.clone()),
            RefOr::T(_) => None,
        }
    }

    #[test]
    fn every_error_status_is_listed_with_the_error_body() {
        let doc = ApiDoc::openapi();
        let ops = operations(&doc);
        assert!(ops.len() > 50, "{} operations", ops.len());
        let public: Vec<String> = ops
            .iter()
            .filter(|(_, _, op)| is_public(op))
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect();
        assert_eq!(
            public,
            [
                "POST /api/v1/auth/login",
                "POST /api/v1/auth/login/totp",
                // Single sign-on: the login itself (the state cookie, the code and
                // the PKCE verifier are its credentials).
                "POST /api/v1/auth/sso/cli/exchange",
                "GET /api/v1/auth/sso/providers",
                "GET /api/v1/auth/sso/{provider}/callback",
                "GET /api/v1/auth/sso/{provider}/start",
                "GET /api/v1/openapi.json",
                "GET /health",
                "GET /metrics",
                "GET /ready",
            ]
        );
        for (method, path, op) in &ops {
            let name = format!("{method} {path}");
            let statuses: Vec<&str> = op.responses.responses.keys().map(String::as_str).collect();
            if !is_public(op) {
                for s in ["401", "500", "503"] {
                    assert!(statuses.contains(&s), "{name} lacks {s}: {statuses:?}");
                }
                if *method != "GET" {
                    assert!(statuses.contains(&"403"), "{name} lacks 403");
                }
            }
            let json_body = op
                .request_body
                .as_ref()
                .is_some_and(|b| b.content.contains_key("application/json"));
            if json_body {
                for s in ["400", "413", "422"] {
                    assert!(statuses.contains(&s), "{name} lacks {s}: {statuses:?}");
                }
            }
            if op
                .parameters
                .iter()
                .flatten()
                .any(|p| matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query))
            {
                assert!(statuses.contains(&"400"), "{name} lacks 400");
            }
            for (status, response) in &op.responses.responses {
                // 3xx: a redirect (the single sign-on routes) has no body.
                if status.starts_with(['1', '2', '3']) || name == "GET /ready" {
                    continue;
                }
                assert_eq!(
                    schema_of(response).as_deref(),
                    Some("#/components/schemas/ErrorBody"),
                    "{name} {status} is not an ErrorBody"
                );
            }
        }
    }
}
