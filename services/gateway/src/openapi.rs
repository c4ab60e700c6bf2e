//! The OpenAPI document, assembled from the handlers' annotations.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
        routes::users::set_password,
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
    ),
    modifiers(&Security),
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
