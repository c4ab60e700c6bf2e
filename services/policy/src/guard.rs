//! Guards: conditions a statement's `when` clauses require, read once when the
//! policy set is built, and checked in a few nanoseconds before Cedar is asked.
//!
//! A `when` clause is satisfied only if every conjunct of its `&&` chain evaluates
//! to `true`. Some conjuncts compare a request fact with a literal: `context.port ==
//! 8080`, `[80, 443].contains(context.port)`, `context.kind == "exec"`,
//! `resource.hasTag("env")`, `resource.getTag("env") == "prod"`, `resource.bucket ==
//! "vault"`. When such a conjunct is false for a request (or its fact is missing,
//! which makes Cedar's evaluation fail), the statement cannot be satisfied, so it
//! cannot decide: Cedar need not evaluate it. Every other kind of conjunct (and every
//! `unless` clause) is left to Cedar. Guards only ever skip statements that Cedar
//! would find unsatisfied, so decisions are unchanged; the engine's property test
//! checks that against Cedar over the whole set.
//!
//! When a statement's condition is nothing but guards (every conjunct recognised,
//! no `unless`), its guards are its condition: it is satisfied exactly when its
//! scope matches and they hold, and Cedar is not asked at all. The one difference
//! is in diagnostics: where Cedar would report an evaluation error (a fact that is
//! missing), the statement is simply not satisfied, which is what Cedar decides
//! too.

use cedar_policy::Policy;
use serde_json::Value;

/// A request fact a guard reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// `context.<name>`.
    Context(String),
    /// `resource.<name>`.
    Resource(String),
    /// `resource.getTag("<name>")`.
    Tag(String),
}

/// A literal a fact is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// A Cedar `Long`.
    Long(i64),
    /// A Cedar `String`.
    Str(String),
}

/// A fact's value in one request, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// A `Long`.
    Long(i64),
    /// A `String`.
    Str(&'a str),
    /// `bucket/key`, without building the string.
    Path(&'a str, &'a str),
}

impl Literal {
    fn equals(&self, seen: Seen<'_>) -> bool {
        match (self, seen) {
            (Self::Long(a), Seen::Long(b)) => *a == b,
            (Self::Str(a), Seen::Str(b)) => a == b,
            (Self::Str(a), Seen::Path(bucket, key)) => a
                .strip_prefix(bucket)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|rest| rest == key),
            _ => false,
        }
    }
}

/// One necessary condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The fact equals the literal.
    Eq(Fact, Literal),
    /// The fact equals one of the literals.
    OneOf(Fact, Vec<Literal>),
    /// The resource has this tag.
    HasTag(String),
}

/// What a request tells guards.
pub trait Facts {
    /// The value of `fact`, None when the request has no such fact.
    fn fact(&self, fact: &Fact) -> Option<Seen<'_>>;
    /// Whether the resource has tag `name`.
    fn has_tag(&self, name: &str) -> bool;
}

impl Guard {
    /// Whether the guard holds for `facts` (false: the statement cannot be satisfied).
    pub fn holds(&self, facts: &impl Facts) -> bool {
        match self {
            Self::Eq(fact, lit) => facts.fact(fact).is_some_and(|seen| lit.equals(seen)),
            Self::OneOf(fact, lits) => facts
                .fact(fact)
                .is_some_and(|seen| lits.iter().any(|l| l.equals(seen))),
            Self::HasTag(name) => facts.has_tag(name),
        }
    }
}

/// The guards of `policy` (one per recognised conjunct of its `when` clauses), and
/// whether they are its whole condition: no `unless` clause and every conjunct
/// recognised. Such a statement is satisfied exactly when its scope matches and its
/// guards hold.
pub fn guards_of(policy: &Policy) -> (Vec<Guard>, bool) {
    let Ok(json) = policy.to_json() else {
        return (Vec::new(), false);
    };
    let mut out = Vec::new();
    let mut exact = true;
    for condition in json["conditions"].as_array().into_iter().flatten() {
        if condition["kind"] == "when" {
            exact &= conjuncts(&condition["body"], &mut out);
        } else {
            exact = false;
        }
    }
    (out, exact)
}

/// Walk an `&&` chain, keeping the conjuncts that are guards; whether every
/// conjunct was one.
fn conjuncts(e: &Value, out: &mut Vec<Guard>) -> bool {
    if let Some(and) = e.get("&&") {
        let left = conjuncts(&and["left"], out);
        conjuncts(&and["right"], out) && left
    } else if let Some(guard) = guard(e) {
        out.push(guard);
        true
    } else {
        false
    }
}

fn guard(e: &Value) -> Option<Guard> {
    if let Some(eq) = e.get("==") {
        let (l, r) = (&eq["left"], &eq["right"]);
        return match (fact(l), literal(r), fact(r), literal(l)) {
            (Some(f), Some(lit), _, _) | (_, _, Some(f), Some(lit)) => Some(Guard::Eq(f, lit)),
            _ => None,
        };
    }
    if let Some(contains) = e.get("contains") {
        let set = contains["left"].get("Set")?.as_array()?;
        let lits = set.iter().map(literal).collect::<Option<Vec<_>>>()?;
        return Some(Guard::OneOf(fact(&contains["right"])?, lits));
    }
    if let Some(has) = e.get("hasTag") {
        if has["left"]["Var"] != "resource" {
            return None;
        }
        return Some(Guard::HasTag(has["right"]["Value"].as_str()?.to_owned()));
    }
    None
}

fn fact(e: &Value) -> Option<Fact> {
    if let Some(dot) = e.get(".") {
        let attr = dot["attr"].as_str()?.to_owned();
        return match dot["left"]["Var"].as_str()? {
            "context" => Some(Fact::Context(attr)),
            "resource" => Some(Fact::Resource(attr)),
            _ => None,
        };
    }
    if let Some(get) = e.get("getTag") {
        if get["left"]["Var"] != "resource" {
            return None;
        }
        return Some(Fact::Tag(get["right"]["Value"].as_str()?.to_owned()));
    }
    None
}

fn literal(e: &Value) -> Option<Literal> {
    match e.get("Value")? {
        Value::Number(n) => n.as_i64().map(Literal::Long),
        Value::String(s) => Some(Literal::Str(s.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use super::*;

    fn guards(text: &str) -> Vec<Guard> {
        guards_of(&Policy::from_str(text).unwrap()).0
    }

    fn exact(text: &str) -> bool {
        guards_of(&Policy::from_str(text).unwrap()).1
    }

    #[test]
    fn a_condition_of_guards_alone_is_exact() {
        assert!(exact(r#"permit(principal, action, resource);"#));
        assert!(exact(
            r#"permit(principal, action, resource) when { context.port == 22 && resource.hasTag("env") } when { resource.getTag("env") == "prod" };"#
        ));
        assert!(!exact(
            r#"permit(principal, action, resource) when { context.port == 22 && context.port > 1 };"#
        ));
        assert!(!exact(
            r#"permit(principal, action, resource) when { context.port == 22 } unless { context.protocol == "tcp" };"#
        ));
        assert!(!exact(
            r#"permit(principal, action, resource) when { context.port == 22 || context.port == 80 };"#
        ));
    }

    fn ctx(name: &str) -> Fact {
        Fact::Context(name.into())
    }

    #[test]
    fn comparisons_with_literals_in_when_clauses_are_guards() {
        let g = guards(
            r#"permit(principal, action, resource) when {
                context.port == 8080 && resource.hasTag("env") && "prod" == resource.getTag("env")
                && [80, 443].contains(context.port) && resource.bucket == "vault"
                && resource.key like "app/*" && context.port > 2
            } unless { context.protocol == "tcp" };"#,
        );
        assert_eq!(
            g,
            vec![
                Guard::Eq(ctx("port"), Literal::Long(8080)),
                Guard::HasTag("env".into()),
                Guard::Eq(Fact::Tag("env".into()), Literal::Str("prod".into())),
                Guard::OneOf(ctx("port"), vec![Literal::Long(80), Literal::Long(443)]),
                Guard::Eq(
                    Fact::Resource("bucket".into()),
                    Literal::Str("vault".into())
                ),
            ],
            "`like`, `>` and the unless clause are left to Cedar"
        );
    }

    #[test]
    fn only_conjunctions_give_guards() {
        assert!(
            guards(
                r#"permit(principal, action, resource) when { context.port == 22 || context.port == 80 };"#
            )
            .is_empty()
        );
        assert!(
            guards(r#"permit(principal, action, resource) when { !(context.port == 22) };"#)
                .is_empty()
        );
        assert!(guards(r#"permit(principal, action, resource);"#).is_empty());
    }

    struct Request;

    impl Facts for Request {
        fn fact(&self, fact: &Fact) -> Option<Seen<'_>> {
            match fact {
                Fact::Context(n) if n == "port" => Some(Seen::Long(443)),
                Fact::Resource(n) if n == "path" => Some(Seen::Path("vault", "db/main")),
                _ => None,
            }
        }
        fn has_tag(&self, name: &str) -> bool {
            name == "env"
        }
    }

    #[test]
    fn guards_hold_by_value_and_type() {
        let holds = |g: Guard| g.holds(&Request);
        assert!(holds(Guard::Eq(ctx("port"), Literal::Long(443))));
        assert!(!holds(Guard::Eq(ctx("port"), Literal::Long(80))));
        assert!(!holds(Guard::Eq(ctx("port"), Literal::Str("443".into()))));
        assert!(holds(Guard::OneOf(
            ctx("port"),
            vec![Literal::Long(80), Literal::Long(443)]
        )));
        // A missing fact: Cedar's evaluation would fail, so the statement never decides.
        assert!(!holds(Guard::Eq(ctx("kind"), Literal::Str("exec".into()))));
        assert!(holds(Guard::HasTag("env".into())));
        assert!(!holds(Guard::HasTag("team".into())));
        let path = |p: &str| Guard::Eq(Fact::Resource("path".into()), Literal::Str(p.into()));
        assert!(holds(path("vault/db/main")));
        assert!(!holds(path("vault/db")));
        assert!(!holds(path("vaultdb/main")));
    }
}
