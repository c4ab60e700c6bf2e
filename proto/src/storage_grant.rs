//! The storage-token decision, written once: the gateway uses it to refuse early
//! from its cache of grants, and the storage service makes it again on every host
//! request, so the two can never disagree.

use std::fmt;

use crate::storage::v1::{Access, StorageGrant, Surface};

impl Surface {
    /// The name used in the REST API, scopes and the database: `kv` or `static`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kv => "kv",
            Self::Static => "static",
            Self::Unspecified => "unspecified",
        }
    }

    /// Parse `kv` / `static`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "kv" => Some(Self::Kv),
            "static" => Some(Self::Static),
            _ => None,
        }
    }
}

impl Access {
    /// The name used in the REST API and the database: `read`, `write` or `admin`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
            Self::Unspecified => "none",
        }
    }

    /// Parse `read` / `write` / `admin`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// Why a grant does not cover a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantRefusal {
    /// The token has expired.
    Expired,
    /// The token is for the other surface.
    WrongSurface {
        /// The token's surface.
        token: Surface,
    },
    /// The bucket is in another org, or not in the token's bucket list.
    OtherBucket,
    /// The token's access level is below what the request needs.
    Insufficient {
        /// The token's level.
        has: Access,
        /// What the request needs.
        needs: Access,
    },
}

impl fmt::Display for GrantRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired => f.write_str("this storage token has expired"),
            Self::WrongSurface { token } => {
                write!(f, "this storage token is for the {} surface", token.name())
            }
            Self::OtherBucket => f.write_str("this storage token does not cover this bucket"),
            Self::Insufficient { has, needs } => write!(
                f,
                "this storage token has {} access; this request needs {}",
                has.name(),
                needs.name()
            ),
        }
    }
}

impl StorageGrant {
    /// Whether this grant lets its holder use bucket `bucket` of org `org_id` on
    /// `surface` with `needs` access, at `now_ms`.
    pub fn check(
        &self,
        org_id: &str,
        bucket: &str,
        surface: Surface,
        needs: Access,
        now_ms: i64,
    ) -> Result<(), GrantRefusal> {
        if self.expires_at_ms != 0 && self.expires_at_ms <= now_ms {
            return Err(GrantRefusal::Expired);
        }
        if self.surface() != surface {
            return Err(GrantRefusal::WrongSurface {
                token: self.surface(),
            });
        }
        if self.org_id != org_id || !self.buckets.iter().any(|b| b == "*" || b == bucket) {
            return Err(GrantRefusal::OtherBucket);
        }
        if self.access() < needs {
            return Err(GrantRefusal::Insufficient {
                has: self.access(),
                needs,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(access: Access, buckets: &[&str]) -> StorageGrant {
        StorageGrant {
            id: "t1".into(),
            name: "deploy".into(),
            org_id: "org-a".into(),
            buckets: buckets.iter().map(|b| (*b).to_owned()).collect(),
            expires_at_ms: 0,
            surface: Surface::Kv.into(),
            access: access.into(),
        }
    }

    #[test]
    fn levels_include_the_ones_below() {
        let g = grant(Access::Write, &["conf"]);
        assert_eq!(
            g.check("org-a", "conf", Surface::Kv, Access::Read, 1),
            Ok(())
        );
        assert_eq!(
            g.check("org-a", "conf", Surface::Kv, Access::Write, 1),
            Ok(())
        );
        assert_eq!(
            g.check("org-a", "conf", Surface::Kv, Access::Admin, 1),
            Err(GrantRefusal::Insufficient {
                has: Access::Write,
                needs: Access::Admin
            })
        );
    }

    #[test]
    fn org_bucket_surface_and_expiry_are_checked() {
        let g = grant(Access::Admin, &["conf"]);
        assert_eq!(
            g.check("org-b", "conf", Surface::Kv, Access::Read, 1),
            Err(GrantRefusal::OtherBucket)
        );
        assert_eq!(
            g.check("org-a", "other", Surface::Kv, Access::Read, 1),
            Err(GrantRefusal::OtherBucket)
        );
        assert_eq!(
            g.check("org-a", "conf", Surface::Static, Access::Read, 1),
            Err(GrantRefusal::WrongSurface { token: Surface::Kv })
        );
        let every = grant(Access::Read, &["*"]);
        assert_eq!(
            every.check("org-a", "any", Surface::Kv, Access::Read, 1),
            Ok(())
        );
        assert_eq!(
            every.check("org-b", "any", Surface::Kv, Access::Read, 1),
            Err(GrantRefusal::OtherBucket)
        );
        let expiring = StorageGrant {
            expires_at_ms: 100,
            ..grant(Access::Read, &["conf"])
        };
        assert_eq!(
            expiring.check("org-a", "conf", Surface::Kv, Access::Read, 99),
            Ok(())
        );
        assert_eq!(
            expiring.check("org-a", "conf", Surface::Kv, Access::Read, 100),
            Err(GrantRefusal::Expired)
        );
        // A grant whose enums this build does not know allows nothing.
        let unknown = StorageGrant {
            access: 42,
            ..grant(Access::Read, &["conf"])
        };
        assert!(
            unknown
                .check("org-a", "conf", Surface::Kv, Access::Read, 1)
                .is_err()
        );
    }
}
