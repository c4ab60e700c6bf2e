//! Operator scopes: the strings carried by users and API tokens.
//!
//! A scope is `area:level` or `*`. Within an area `admin` includes `write`, which
//! includes `read`; `*` includes everything in an org. The platform scopes
//! ([`PLATFORM_SCOPES`], managing the orgs themselves) are outside every org, so `*`
//! does not include them: only a grant of the scope itself does.

/// Every scope the server knows. A token may only be created with these.
pub const KNOWN_SCOPES: &[&str] = &[
    "*",
    "kv:read",
    "kv:write",
    "kv:admin",
    "static:read",
    "static:write",
    "static:admin",
    "users:read",
    "users:admin",
    "tokens:write",
    "nodes:read",
    "nodes:write",
    "nodes:proxy",
    "releases:admin",
    "tasks:read",
    "tasks:write",
    "policy:read",
    "policy:write",
    "policy:approve",
    "audit:read",
    "orgs:admin",
];

/// Scopes over the platform rather than one org; `*` does not include them.
pub const PLATFORM_SCOPES: &[&str] = &["orgs:admin"];

/// Why a scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Not one of [`KNOWN_SCOPES`].
    #[error("unknown scope {0:?}")]
    Unknown(String),
}

/// Check that every scope is known; returns them sorted and deduplicated.
pub fn validate(scopes: &[String]) -> Result<Vec<String>, ScopeError> {
    let mut out = Vec::with_capacity(scopes.len());
    for s in scopes {
        if !KNOWN_SCOPES.contains(&s.as_str()) {
            return Err(ScopeError::Unknown(s.clone()));
        }
        out.push(s.clone());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn level_rank(level: &str) -> Option<u8> {
    match level {
        "read" => Some(1),
        "write" => Some(2),
        "admin" | "approve" | "proxy" => None,
        _ => None,
    }
}

/// Whether one granted scope covers one required scope.
pub fn covers(granted: &str, required: &str) -> bool {
    if granted == required {
        return true;
    }
    if PLATFORM_SCOPES.contains(&required) {
        return false;
    }
    if granted == "*" {
        return true;
    }
    let (Some((g_area, g_level)), Some((r_area, r_level))) =
        (granted.split_once(':'), required.split_once(':'))
    else {
        return false;
    };
    if g_area != r_area {
        return false;
    }
    if g_level == "admin" {
        return matches!(r_level, "read" | "write");
    }
    matches!((level_rank(g_level), level_rank(r_level)), (Some(g), Some(r)) if g >= r)
}

/// Whether a set of granted scopes allows `required`.
pub fn allows(granted: &[String], required: &str) -> bool {
    granted.iter().any(|g| covers(g, required))
}

/// Whether every scope in `requested` is covered by `granted` (a token never exceeds
/// its creator).
pub fn all_covered(granted: &[String], requested: &[String]) -> bool {
    requested.iter().all(|r| {
        if r == "*" {
            granted.iter().any(|g| g == "*")
        } else {
            allows(granted, r)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn admin_includes_write_includes_read() {
        assert!(covers("kv:admin", "kv:write"));
        assert!(covers("kv:admin", "kv:read"));
        assert!(covers("kv:write", "kv:read"));
        assert!(!covers("kv:read", "kv:write"));
        assert!(!covers("kv:write", "kv:admin"));
        assert!(!covers("kv:admin", "static:read"));
        assert!(covers("*", "static:admin"));
        assert!(!covers("nodes:read", "nodes:proxy"));
    }

    #[test]
    fn the_org_wildcard_does_not_reach_the_platform() {
        assert!(!covers("*", "orgs:admin"));
        assert!(covers("orgs:admin", "orgs:admin"));
        assert!(!all_covered(&v(&["*"]), &v(&["orgs:admin"])));
        assert!(all_covered(
            &v(&["*", "orgs:admin"]),
            &v(&["*", "orgs:admin"])
        ));
    }

    #[test]
    fn requested_scopes_never_exceed_granted() {
        assert!(all_covered(&v(&["*"]), &v(&["*", "kv:read"])));
        assert!(all_covered(&v(&["kv:admin"]), &v(&["kv:read", "kv:write"])));
        assert!(!all_covered(&v(&["kv:admin"]), &v(&["*"])));
        assert!(!all_covered(&v(&["kv:read"]), &v(&["kv:write"])));
    }

    #[test]
    fn unknown_scopes_are_named() {
        assert_eq!(
            validate(&v(&["kv:raed"])),
            Err(ScopeError::Unknown("kv:raed".into()))
        );
        assert_eq!(
            validate(&v(&["kv:read", "*", "kv:read"])).unwrap(),
            v(&["*", "kv:read"])
        );
    }
}
