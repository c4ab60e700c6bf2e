//! REST routes under `/api/v1`, one module per area.

pub mod auth;
pub mod changes;
pub mod groups;
pub mod nodes;
pub mod orgs;
pub mod policies;
pub mod releases;
pub mod sso;
pub mod system;
pub mod tasks;
pub mod tokens;
pub mod users;

use serde::Serialize;

/// `{"ok": true}` for calls with nothing else to say.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ok {
    /// Always true.
    pub ok: bool,
}

impl Ok {
    /// The value.
    pub const fn yes() -> Self {
        Self { ok: true }
    }
}
