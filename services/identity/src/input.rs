//! What the identity service is asked to do about groups, validated: the gRPC
//! adapter converts each such request message into one of these once, with
//! `TryFrom`, and the service works only with valid values.

use std::fmt;

use lattice_proto::identity::v1 as pb;

use crate::error::IdentityError;

type Result<T> = std::result::Result<T, IdentityError>;

/// The group every org has, whose members administer it. It cannot be deleted.
pub const ADMINS_GROUP: &str = "admins";
/// Description of an org's `admins` group (the migration writes the same text).
pub const ADMINS_DESCRIPTION: &str = "Administrators of the org";
/// Longest group description, characters.
pub const MAX_DESCRIPTION_CHARS: usize = 256;

/// A login name: 1 to 64 of letters, digits and `._@-`, stored lowercase (input is
/// trimmed and lowercased).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    /// Validate `raw`; errors name the field `username`.
    pub fn parse(raw: &str) -> Result<Self> {
        let name = raw.trim().to_lowercase();
        if name.is_empty() || name.len() > 64 {
            return Err(IdentityError::invalid(
                "username",
                "must be 1 to 64 characters",
            ));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
        {
            return Err(IdentityError::invalid(
                "username",
                "may contain only letters, digits and . _ @ -",
            ));
        }
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An org name: a DNS label, like group names (it appears in URLs and CLI output).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrgName(String);

impl OrgName {
    /// Validate `raw`; errors name `field`.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self> {
        let ok = (1..=63).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-')
            && !raw.ends_with('-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(IdentityError::invalid(
                field,
                format!(
                    "org name {raw:?} must be 1 to 63 lowercase letters, digits or '-', not starting or ending with '-'"
                ),
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A group name: a DNS label, like bucket names (1 to 63 of `a-z`, `0-9` and `-`,
/// not starting or ending with `-`). Refused, not lowercased: policies name groups,
/// and a name must mean one group however it is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupName(String);

impl GroupName {
    /// Validate `raw`; errors name the field `name`.
    pub fn parse(raw: &str) -> Result<Self> {
        let ok = (1..=63).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-')
            && !raw.ends_with('-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(IdentityError::invalid(
                "name",
                format!(
                    "group name {raw:?} must be 1 to 63 lowercase letters, digits or '-', not starting or ending with '-'"
                ),
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the org's `admins` group.
    pub fn is_admins(&self) -> bool {
        self.0 == ADMINS_GROUP
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A group to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroup {
    /// Its name, unique in the org.
    pub name: GroupName,
    /// What it is for (at most 256 characters, no control characters; may be empty).
    pub description: String,
}

impl TryFrom<pb::CreateGroupRequest> for NewGroup {
    type Error = IdentityError;

    fn try_from(m: pb::CreateGroupRequest) -> Result<Self> {
        let name = GroupName::parse(&m.name)?;
        if m.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(IdentityError::invalid(
                "description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        if m.description.chars().any(char::is_control) {
            return Err(IdentityError::invalid(
                "description",
                "must not contain control characters",
            ));
        }
        Ok(Self {
            name,
            description: m.description,
        })
    }
}

impl TryFrom<pb::GetGroupRequest> for GroupName {
    type Error = IdentityError;

    fn try_from(m: pb::GetGroupRequest) -> Result<Self> {
        Self::parse(&m.name)
    }
}

impl TryFrom<pb::DeleteGroupRequest> for GroupName {
    type Error = IdentityError;

    fn try_from(m: pb::DeleteGroupRequest) -> Result<Self> {
        Self::parse(&m.name)
    }
}

/// A user's membership of a group, both named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The group, in the caller's org.
    pub group: GroupName,
    /// The user, in the caller's org.
    pub username: Username,
}

impl TryFrom<pb::AddGroupMemberRequest> for Membership {
    type Error = IdentityError;

    fn try_from(m: pb::AddGroupMemberRequest) -> Result<Self> {
        Ok(Self {
            group: GroupName::parse(&m.name)?,
            username: Username::parse(&m.username)?,
        })
    }
}

impl TryFrom<pb::RemoveGroupMemberRequest> for Membership {
    type Error = IdentityError;

    fn try_from(m: pb::RemoveGroupMemberRequest) -> Result<Self> {
        Ok(Self {
            group: GroupName::parse(&m.name)?,
            username: Username::parse(&m.username)?,
        })
    }
}

/// Whose groups to list, and in which org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserGroupsQuery {
    /// The user.
    pub username: Username,
    /// The org to look in; None: the caller's (an end user), or the user's own (a
    /// service: usernames are unique across orgs).
    pub org_id: Option<String>,
}

impl TryFrom<pb::UserGroupsRequest> for UserGroupsQuery {
    type Error = IdentityError;

    fn try_from(m: pb::UserGroupsRequest) -> Result<Self> {
        Ok(Self {
            username: Username::parse(&m.username)?,
            org_id: (!m.org_id.is_empty()).then_some(m.org_id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_dns_labels() {
        for good in ["admins", "ops", "a", "team-1", &"x".repeat(63)] {
            assert_eq!(GroupName::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "Ops",
            "-ops",
            "ops-",
            "a_b",
            "a.b",
            "ops team",
            "é",
            &"x".repeat(64),
        ] {
            let err = GroupName::parse(bad).unwrap_err();
            assert!(err.to_string().starts_with("name: group name"), "{err}");
        }
        assert!(GroupName::parse("admins").unwrap().is_admins());
    }

    #[test]
    fn usernames_are_trimmed_and_lowercased() {
        assert_eq!(Username::parse(" Bob ").unwrap().as_str(), "bob");
        assert_eq!(
            Username::parse("a/b").unwrap_err().to_string(),
            "username: may contain only letters, digits and . _ @ -"
        );
        assert!(Username::parse("").is_err());
    }

    #[test]
    fn descriptions_are_bounded_and_printable() {
        let new = |description: &str| {
            NewGroup::try_from(pb::CreateGroupRequest {
                name: "ops".into(),
                description: description.into(),
            })
        };
        assert_eq!(new("").unwrap().description, "");
        assert!(new(&"é".repeat(256)).is_ok());
        let long = new(&"x".repeat(257)).unwrap_err().to_string();
        assert!(long.starts_with("description: "), "{long}");
        let control = new("a\nb").unwrap_err().to_string();
        assert!(control.starts_with("description: "), "{control}");
    }

    #[test]
    fn user_groups_queries_take_an_optional_org() {
        let q = UserGroupsQuery::try_from(pb::UserGroupsRequest {
            username: "Admin".into(),
            org_id: String::new(),
        })
        .unwrap();
        assert_eq!((q.username.as_str(), q.org_id), ("admin", None));
    }
}
