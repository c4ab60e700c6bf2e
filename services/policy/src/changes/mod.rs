//! Reviewed changes (seed `000_9210514a9a131af6.txt`): "configure intent -> render
//! reviewed plan -> approve hash -> queue task -> agent result -> audit".
//!
//! This module is the pure part: an intent's validation field by field, the
//! artifact each kind renders for a node, the unified diff against what the node
//! has now, and the plan's hash. Rendering is deterministic: the same intent and
//! base always give the same bytes and the same hash.

pub mod dns;
pub mod firewall;
pub mod grpc;
pub mod links;
pub mod proxy;
pub mod service;
pub mod store;
pub mod update;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// One bad field of an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `spec.rules[2].ports`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Problem {
    /// A problem with `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Every bad field found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Add one.
    pub fn push(&mut self, p: Problem) {
        self.0.push(p);
    }

    /// None found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// What an intent declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The `inet lattice` nftables table.
    Firewall,
    /// An authoritative DNS zone.
    Dns,
    /// The node's reverse proxy.
    Proxy,
    /// The agent version to run.
    AgentUpdate,
}

impl Kind {
    /// As written in an intent.
    pub fn name(self) -> &'static str {
        match self {
            Self::Firewall => "firewall",
            Self::Dns => "dns",
            Self::Proxy => "proxy",
            Self::AgentUpdate => "agent.update",
        }
    }

    /// Parse an intent's `kind`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "firewall" => Self::Firewall,
            "dns" => Self::Dns,
            "proxy" => Self::Proxy,
            "agent.update" => Self::AgentUpdate,
            _ => return None,
        })
    }

    /// The task kind that applies it on a node.
    pub fn task_kind(self) -> &'static str {
        match self {
            Self::Firewall => "firewall.apply",
            Self::Dns => "dns.apply",
            Self::Proxy => "proxy.apply",
            Self::AgentUpdate => "agent.update",
        }
    }

    /// The artifact's name in what the agent reports.
    pub fn artifact(self) -> &'static str {
        match self {
            Self::Firewall => "firewall",
            Self::Dns => "dns",
            Self::Proxy => "proxy",
            Self::AgentUpdate => "agent",
        }
    }
}

/// Which nodes an intent targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One node, by id.
    Node(String),
    /// Every node of the org with all these labels.
    Labels(std::collections::BTreeMap<String, String>),
}

impl Selector {
    /// As JSON: `{"node": id}` or `{"labels": {...}}`.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Node(id) => serde_json::json!({ "node": id }),
            Self::Labels(l) => serde_json::json!({ "labels": l }),
        }
    }
}

/// A validated spec, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// A firewall table.
    Firewall(firewall::Firewall),
    /// A DNS zone.
    Dns(dns::Zone),
    /// The reverse proxy's configuration.
    Proxy(proxy::Proxy),
    /// The agent version to run, and how to get there.
    AgentUpdate(update::AgentUpdate),
}

/// A validated intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// Unique per org.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its targets.
    pub selector: Selector,
    /// What it declares.
    pub spec: Spec,
    /// The spec as given (stored, shown back).
    pub spec_json: Value,
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err("1-100 of a-z, 0-9, '-', '_', '.'".into())
    }
}

fn selector(v: Option<&Value>, problems: &mut Problems) -> Option<Selector> {
    let Some(m) = v.and_then(Value::as_object) else {
        problems.push(Problem::new(
            "selector",
            "required: {\"node\": \"<node id>\"} or {\"labels\": {\"env\": \"prod\"}}",
        ));
        return None;
    };
    match (m.get("node"), m.get("labels"), m.len()) {
        (Some(Value::String(id)), None, 1) if !id.is_empty() && id.len() <= 128 => {
            Some(Selector::Node(id.clone()))
        }
        (None, Some(Value::Object(labels)), 1) if !labels.is_empty() && labels.len() <= 32 => {
            let mut out = std::collections::BTreeMap::new();
            for (k, v) in labels {
                let ok_key = !k.is_empty() && k.len() <= 63;
                match v.as_str() {
                    Some(v) if ok_key && v.len() <= 63 => {
                        out.insert(k.clone(), v.to_owned());
                    }
                    _ => problems.push(Problem::new(
                        &format!("selector.labels.{k}"),
                        "label keys and values are strings of at most 63 bytes",
                    )),
                }
            }
            Some(Selector::Labels(out))
        }
        _ => {
            problems.push(Problem::new(
                "selector",
                "exactly one of {\"node\": \"<node id>\"} or {\"labels\": {...}} (1-32 labels)",
            ));
            None
        }
    }
}

impl Intent {
    /// Validate an intent document, naming every bad field; nothing is stored
    /// when this fails.
    pub fn parse(doc: &Value) -> Result<Self, Problems> {
        let mut problems = Problems::default();
        let Some(m) = doc.as_object() else {
            problems.push(Problem::new(
                "intent",
                "an object {\"name\", \"kind\", \"selector\", \"spec\"}",
            ));
            return Err(problems);
        };
        for k in m.keys() {
            if !["name", "kind", "selector", "spec"].contains(&k.as_str()) {
                problems.push(Problem::new(
                    k,
                    "unknown field (known: name, kind, selector, spec)",
                ));
            }
        }
        let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
        if let Err(e) = check_name(name) {
            problems.push(Problem::new("name", e));
        }
        let kind = match m.get("kind").and_then(Value::as_str).map(Kind::parse) {
            Some(Some(k)) => Some(k),
            _ => {
                problems.push(Problem::new(
                    "kind",
                    "one of firewall, dns, proxy, agent.update",
                ));
                None
            }
        };
        let selector = selector(m.get("selector"), &mut problems);
        let spec_json = m.get("spec").cloned().unwrap_or(Value::Null);
        let spec = match kind {
            Some(Kind::Firewall) => match firewall::Firewall::parse(&spec_json) {
                Ok(f) => Some(Spec::Firewall(f)),
                Err(p) => {
                    problems.0.extend(p.0);
                    None
                }
            },
            Some(Kind::Dns) => match dns::Zone::parse(&spec_json) {
                Ok(z) => Some(Spec::Dns(z)),
                Err(p) => {
                    problems.0.extend(p.0);
                    None
                }
            },
            Some(Kind::Proxy) => match proxy::Proxy::parse(&spec_json) {
                Ok(p) => Some(Spec::Proxy(p)),
                Err(p) => {
                    problems.0.extend(p.0);
                    None
                }
            },
            Some(Kind::AgentUpdate) => match update::AgentUpdate::parse(&spec_json) {
                Ok(u) => Some(Spec::AgentUpdate(u)),
                Err(p) => {
                    problems.0.extend(p.0);
                    None
                }
            },
            None => None,
        };
        match (kind, selector, spec) {
            (Some(kind), Some(selector), Some(spec)) if problems.is_empty() => Ok(Self {
                name: name.to_owned(),
                kind,
                selector,
                spec,
                spec_json,
            }),
            _ => Err(problems),
        }
    }

    /// The artifact this intent renders for a node that has `base` now (a DNS
    /// zone's serial follows the node's).
    pub fn render(&self, base: &Base) -> String {
        match &self.spec {
            Spec::Firewall(f) => f.render(&self.name),
            Spec::Dns(z) => z.render(&self.name, &base.content),
            Spec::Proxy(p) => proxy::Renderer::render(&proxy::HaProxy, p, &self.name),
            // Unresolved: a plan carries the release's signed manifest instead
            // (see `service::Changes::create_plan`).
            Spec::AgentUpdate(u) => lattice_proto::release::running(&u.version, "?"),
        }
    }

    /// Nodes in the first wave of its rollout.
    pub fn canary(&self) -> usize {
        match &self.spec {
            Spec::AgentUpdate(u) => u.canary,
            _ => 1,
        }
    }

    /// The managed artifact it changes on a node, by the name the agent reports
    /// it under: `firewall`, `dns:<zone>`, `proxy`.
    pub fn artifact_name(&self) -> String {
        match &self.spec {
            Spec::Dns(z) => format!("dns:{}", z.zone),
            _ => self.kind.artifact().to_owned(),
        }
    }
}

/// What the node has now for an artifact: its hash (`none` when absent) and, when
/// reported, its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// `sha256:<hex>` of the content, or `none`.
    pub hash: String,
    /// The content (empty when absent).
    pub content: String,
}

impl Base {
    /// Nothing there yet: a version like any other (a plan rendered against
    /// `none` is stale once anything has been applied).
    pub fn absent() -> Self {
        Self {
            hash: "none".into(),
            content: String::new(),
        }
    }

    /// Content the node reported.
    pub fn of(content: &str) -> Self {
        Self {
            hash: content_hash(content),
            content: content.to_owned(),
        }
    }
}

/// `sha256:<hex>` of `content`.
pub fn content_hash(content: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(content.as_bytes())))
}

/// One target of a plan, rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node's id.
    pub node: String,
    /// What the node had when the plan was rendered.
    pub base_hash: String,
    /// The artifact to apply.
    pub artifact: String,
    /// Unified diff from the base to the artifact (empty: no change).
    pub diff: String,
}

/// Render `intent` for `node` over what it has now.
pub fn target(intent: &Intent, node: &str, base: &Base) -> Target {
    let artifact = intent.render(base);
    Target {
        node: node.to_owned(),
        base_hash: base.hash.clone(),
        diff: diff(node, &base.content, &artifact),
        artifact,
    }
}

/// A unified diff of `before` (the node's) to `after` (the plan's).
pub fn diff(node: &str, before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("node/{node} (now)"),
            &format!("node/{node} (plan)"),
        )
        .to_string()
}

/// The plan's hash: SHA-256 over its kind and, per target in node order, the node,
/// the base it was rendered against and the artifact. What an approver sends back.
pub fn plan_hash(kind: Kind, targets: &[Target]) -> String {
    let mut sorted: Vec<&Target> = targets.iter().collect();
    sorted.sort_by(|a, b| a.node.cmp(&b.node));
    let mut h = Sha256::new();
    h.update(b"lattice.plan.v1\n");
    h.update(kind.name().as_bytes());
    h.update(b"\n");
    for t in sorted {
        for part in [&t.node, &t.base_hash, &content_hash(&t.artifact)] {
            h.update(part.as_bytes());
            h.update(b"\n");
        }
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn intent(spec: Value) -> Intent {
        Intent::parse(&json!({"name": "web-fw", "kind": "firewall",
            "selector": {"node": "n1"}, "spec": spec}))
        .unwrap()
    }

    #[test]
    fn intents_are_validated_field_by_field() {
        let err = Intent::parse(&json!({"name": "Web FW", "kind": "fw",
            "selector": {"node": "n1", "labels": {}}, "spec": {}, "extra": 1}))
        .unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, vec!["extra", "name", "kind", "selector"]);
        let err = Intent::parse(&json!({"name": "z", "kind": "firewall",
            "selector": {"labels": {"env": 1}}, "spec": {"rules": [{"action": "accept", "ports": "22"}]}}))
        .unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, vec!["selector.labels.env", "spec.rules[0].ports"]);
        let err = Intent::parse(&json!({"name": "z", "kind": "agent.update",
            "selector": {"node": "n1"}, "spec": {}}))
        .unwrap_err();
        assert!(err.to_string().contains("spec.version"), "{err}");
    }

    #[test]
    fn the_plan_hash_covers_kind_target_base_and_artifact() {
        let a = intent(json!({"rules": [{"action": "accept", "protocol": "tcp", "ports": "22"}]}));
        let b = intent(json!({"rules": [{"action": "accept", "protocol": "tcp", "ports": "23"}]}));
        let none = Base::absent();
        let t = |i: &Intent, node: &str, base: &Base| target(i, node, base);
        let h = plan_hash(Kind::Firewall, &[t(&a, "n1", &none)]);
        assert!(h.starts_with("sha256:") && h.len() == 71, "{h}");
        // Same intent and base: same hash; any part changed: another.
        assert_eq!(h, plan_hash(Kind::Firewall, &[t(&a, "n1", &none)]));
        assert_ne!(h, plan_hash(Kind::Firewall, &[t(&b, "n1", &none)]));
        assert_ne!(h, plan_hash(Kind::Firewall, &[t(&a, "n2", &none)]));
        assert_ne!(h, plan_hash(Kind::Dns, &[t(&a, "n1", &none)]));
        let applied = Base::of(&a.render(&none));
        assert_ne!(h, plan_hash(Kind::Firewall, &[t(&a, "n1", &applied)]));
        // Target order does not matter.
        let (x, y) = (t(&a, "n1", &none), t(&a, "n2", &none));
        assert_eq!(
            plan_hash(Kind::Firewall, &[x.clone(), y.clone()]),
            plan_hash(Kind::Firewall, &[y, x])
        );
    }

    #[test]
    fn the_diff_is_against_what_the_node_has() {
        let a = intent(json!({"rules": [{"action": "accept", "protocol": "tcp", "ports": "22"}]}));
        let first = target(&a, "n1", &Base::absent());
        assert!(
            first
                .diff
                .starts_with("--- node/n1 (now)\n+++ node/n1 (plan)\n"),
            "{}",
            first.diff
        );
        assert!(
            first.diff.contains("+\t\ttcp dport 22 accept\n"),
            "{}",
            first.diff
        );
        // Applied: nothing to change.
        let again = target(&a, "n1", &Base::of(&first.artifact));
        assert_eq!(again.diff, "");
        // A hand edit on the node shows as lines the plan removes.
        let edited = first
            .artifact
            .replace("tcp dport 22 accept", "tcp dport 2222 accept");
        let drift = target(&a, "n1", &Base::of(&edited));
        assert!(
            drift.diff.contains("-\t\ttcp dport 2222 accept\n"),
            "{}",
            drift.diff
        );
        assert!(
            drift.diff.contains("+\t\ttcp dport 22 accept\n"),
            "{}",
            drift.diff
        );
    }

    /// Rendering is deterministic: random valid intents render the same bytes and
    /// hash every time, and equal specs written differently (order of ports or
    /// networks, duplicates) render the same.
    #[test]
    fn rendering_is_deterministic() {
        use rand::rngs::StdRng;
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..2_000 {
            let mut ports: Vec<u16> = (0..rng.random_range(1..5))
                .map(|_| rng.random_range(1..2000))
                .collect();
            let nets = [
                "10.0.0.0/8",
                "192.0.2.0/24",
                "2001:db8::/32",
                "198.51.100.7",
            ];
            let mut from: Vec<&str> = (0..rng.random_range(1..4))
                .map(|_| nets[rng.random_range(0..nets.len())])
                .collect();
            let rule = |ports: &[u16], from: &[&str]| {
                json!({"action": "accept", "protocol": "tcp",
                    "ports": ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","),
                    "from": from})
            };
            let a = intent(json!({"default": "drop", "rules": [rule(&ports, &from)]}));
            ports.reverse();
            ports.push(ports[0]);
            from.reverse();
            let b = intent(json!({"default": "drop", "rules": [rule(&ports, &from)]}));
            assert_eq!(a.render(&Base::absent()), b.render(&Base::absent()));
            let base = Base::absent();
            assert_eq!(
                plan_hash(Kind::Firewall, &[target(&a, "n", &base)]),
                plan_hash(Kind::Firewall, &[target(&b, "n", &base)])
            );
        }
    }
}
