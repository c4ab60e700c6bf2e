//! Policy documents: a name, Cedar text of one or more statements, and the fields of
//! the seed's `CedarPolicy` spec (`enabled`, `priority`, `description`), plus an
//! optional expiry. Text is parsed and validated against the shipped schema (strict
//! mode) before anything is stored.

use std::str::FromStr as _;
use std::sync::LazyLock;

use cedar_policy::{Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;

/// The schema text shipped with the service.
pub const SCHEMA_TEXT: &str = include_str!("lattice.cedarschema");

/// The parsed schema (it ships with the binary, so it always parses).
pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema::from_cedarschema_str(SCHEMA_TEXT)
        .map(|(schema, _warnings)| schema)
        .unwrap_or_else(|e| panic!("the shipped Cedar schema does not parse: {e:?}"))
});

/// Largest policy text, bytes.
pub const MAX_TEXT: usize = 64 * 1024;
/// Most statements in one policy document.
pub const MAX_STATEMENTS: usize = 100;

/// A policy as stored and served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDoc {
    /// Unique per org.
    pub name: String,
    /// Cedar text: one or more statements.
    pub text: String,
    /// Disabled policies take part in no decision.
    pub enabled: bool,
    /// Higher first: the order policies are evaluated and reported in. Cedar's
    /// answer does not depend on it (a satisfied `forbid` always wins).
    pub priority: i64,
    /// Free text.
    pub description: String,
    /// Past this instant (ms since the epoch) the policy takes part in no decision.
    pub expires_at_ms: Option<i64>,
}

/// One problem with a policy text, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Cedar's message.
    pub message: String,
    /// 1-based line, when Cedar names a place.
    pub line: Option<u32>,
    /// 1-based column, when Cedar names a place.
    pub column: Option<u32>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// Problems joined into one message.
pub fn describe(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A policy name: 1-100 characters of `a-z`, `0-9`, `-`, `_`, `.`, starting with a
/// letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name: {name:?} must be 1-100 characters of a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
        ))
    }
}

/// The Cedar id of statement `i` of document `name`.
pub fn statement_id(name: &str, i: usize) -> PolicyId {
    PolicyId::new(format!("{name}#{i}"))
}

/// The document a statement id belongs to.
pub fn doc_of(id: &PolicyId) -> &str {
    let s: &str = id.as_ref();
    s.rsplit_once('#').map_or(s, |(name, _)| name)
}

/// Parse `text` and validate it against the schema in strict mode: the statements,
/// with ids `name#0`, `name#1`, ..., or every problem found.
pub fn compile(name: &str, text: &str) -> Result<Vec<Policy>, Vec<Problem>> {
    if text.len() > MAX_TEXT {
        return Err(vec![Problem {
            message: format!("the policy text is longer than {MAX_TEXT} bytes"),
            line: None,
            column: None,
        }]);
    }
    let parsed = PolicySet::from_str(text).map_err(|e| problems(text, &e))?;
    if parsed.templates().next().is_some() {
        return Err(vec![Problem {
            message: "templates (?principal, ?resource) are not supported: name the entity".into(),
            line: None,
            column: None,
        }]);
    }
    let mut statements: Vec<Policy> = parsed.policies().cloned().collect();
    if statements.is_empty() {
        return Err(vec![Problem {
            message: "the policy text holds no statement (permit or forbid)".into(),
            line: None,
            column: None,
        }]);
    }
    if statements.len() > MAX_STATEMENTS {
        return Err(vec![Problem {
            message: format!("at most {MAX_STATEMENTS} statements per policy"),
            line: None,
            column: None,
        }]);
    }
    // Source order (the parser's ids are policy0, policy1, ...).
    statements.sort_by_key(|p| {
        let id: &str = p.id().as_ref();
        id.trim_start_matches("policy")
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    let validator = Validator::new(SCHEMA.clone());
    let result = validator.validate(&parsed, ValidationMode::Strict);
    if !result.validation_passed() {
        return Err(result
            .validation_errors()
            .map(|e| problem(text, e))
            .collect());
    }
    Ok(statements
        .into_iter()
        .enumerate()
        .map(|(i, p)| p.new_id(statement_id(name, i)))
        .collect())
}

fn problems(text: &str, errors: &cedar_policy::ParseErrors) -> Vec<Problem> {
    errors.iter().map(|e| problem(text, e)).collect()
}

/// A Cedar diagnostic as a problem, its first label's offset as line and column.
fn problem(text: &str, e: &(impl Diagnostic + std::fmt::Display)) -> Problem {
    let mut message = numbered(e.to_string());
    if let Some(help) = e.help() {
        message = format!("{message} ({help})");
    }
    let offset = e
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset());
    let (line, column) = match offset {
        Some(off) => {
            let (l, c) = line_column(text, off);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    Problem {
        message,
        line,
        column,
    }
}

/// Cedar names statements by its parser's ids (`for policy `policy0`, ...`), which
/// the author never wrote: say `statement 1: ...` instead.
fn numbered(message: String) -> String {
    let Some(rest) = message.strip_prefix("for policy `policy") else {
        return message;
    };
    match rest.split_once("`, ") {
        Some((n, tail)) => match n.parse::<usize>() {
            Ok(n) => format!("statement {}: {tail}", n + 1),
            Err(_) => message,
        },
        None => message,
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(col).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parses_and_the_issue_examples_validate() {
        let _ = &*SCHEMA;
        for text in [
            r#"permit(principal == Lattice::User::"alice", action == Lattice::Action::"AccessNode", resource) when { context.port == 8080 };"#,
            r#"permit(principal in Lattice::Group::"admins", action, resource);"#,
            r#"permit(principal, action == Lattice::Action::"AccessNode", resource) when { resource.hasTag("env") && resource.getTag("env") == "prod" };"#,
            r#"forbid(principal, action == Lattice::Action::"AccessSecret", resource) when { resource.path like "*/prod/*" };"#,
            r#"permit(principal == Lattice::Service::"token:deploy", action == Lattice::Action::"AccessSecret", resource) when { resource.bucket == "app-secrets" };"#,
            r#"permit(principal, action == Lattice::Action::"RunTask", resource) when { context.kind == "exec" };"#,
            r#"permit(principal in Lattice::Group::"web", action == Lattice::Action::"AccessNode", resource) when { resource.hasTag("env") && resource.getTag("env") == "prod" && [80, 443, 8080].contains(context.port) && context.protocol == "http" };"#,
            r#"permit(principal == Lattice::User::"alice", action, resource) when { context has port && context.port == 22 };"#,
        ] {
            let compiled = compile("p", text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(compiled[0].id().to_string(), "p#0");
        }
    }

    #[test]
    fn every_example_in_the_docs_validates() {
        let doc = include_str!("../../../docs/policy.md");
        let mut blocks = 0;
        let mut rest = doc;
        while let Some(start) = rest.find("```cedar\n") {
            let body = &rest[start + "```cedar\n".len()..];
            let end = body.find("```").expect("a closed code block");
            compile("doc", &body[..end]).unwrap_or_else(|e| panic!("{}: {e:?}", &body[..end]));
            blocks += 1;
            rest = &body[end + 3..];
        }
        assert!(blocks >= 8, "found {blocks} cedar blocks in docs/policy.md");
    }

    #[test]
    fn problems_name_the_statement_not_the_parser_id() {
        let err = compile(
            "p",
            "permit(principal, action, resource);\npermit(principal, action == Lattice::Action::\"RunTask\", resource) when { context.port == 1 };",
        )
        .unwrap_err();
        assert!(err[0].message.starts_with("statement 2: "), "{err:?}");
        assert!(!err[0].message.contains("policy1"), "{err:?}");
        assert_eq!(numbered("other text".into()), "other text");
    }

    #[test]
    fn problems_name_the_place() {
        let err = compile(
            "p",
            "permit(principal, action,\n  resource) when { context.port = 1 };",
        )
        .unwrap_err();
        assert_eq!(err[0].line, Some(2), "{err:?}");
        // Unknown entity type, unknown attribute: refused by strict validation.
        let err = compile(
            "p",
            r#"permit(principal == Lattice::Person::"bob", action, resource);"#,
        )
        .unwrap_err();
        assert!(describe(&err).contains("Person"), "{err:?}");
        let err = compile(
            "p",
            "permit(principal, action == Lattice::Action::\"AccessNode\", resource)\nwhen { resource.colour == \"red\" };",
        )
        .unwrap_err();
        assert!(describe(&err).contains("colour"), "{err:?}");
        assert_eq!(err[0].line, Some(2), "{err:?}");
        assert!(compile("p", "").is_err());
        assert!(compile("p", "permit(principal == ?principal, action, resource);").is_err());
    }

    #[test]
    fn statements_keep_their_order_and_names() {
        let c = compile(
            "two",
            "forbid(principal, action, resource) when { false };\npermit(principal, action, resource);",
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].effect(), cedar_policy::Effect::Forbid);
        assert_eq!(doc_of(c[1].id()), "two");
        assert!(check_name("web-access_1.x").is_ok());
        assert!(check_name("Web").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("").is_err());
    }
}
