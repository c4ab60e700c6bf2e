//! Nodes: join tokens and enrollment, the node registry the operator API reads and
//! changes, metrics and logs, and the fleet's Prometheus exposition.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use lattice_core::audit::{Actor, AuditSink, Outcome, TableAudit};
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::crypto::{hash_secret, random_secret};
use lattice_core::time::now_ms;
use lattice_proto::agent::v1 as agent;
use lattice_proto::join_token::JoinToken;
use lattice_proto::task_kinds::CAPABILITIES;

use crate::error::TunnelError;
use crate::store::{NodeRow, Store};

/// Settings the service needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval_ms: i64,
    pub metrics_interval_ms: i64,
    pub metrics_retention_ms: i64,
    pub logs_retention_ms: i64,
    pub join_token_max_ttl_s: i64,
    /// Most proxy streams (requests and port forwards) open at once to one node.
    pub max_proxy_streams: usize,
    /// How often an agent's session looks for work without being woken: a safety net
    /// when pushes reach this replica (the tasks service here, or a shared bus),
    /// the only way when they cannot.
    pub task_poll_ms: i64,
    /// Hosts agents may be sent to (lowercase); empty: none.
    pub agent_hosts: Vec<String>,
}

/// The node registry.
#[derive(Debug, Clone)]
pub struct Nodes {
    pub(crate) store: Store,
    pub(crate) settings: Settings,
    audit: Arc<dyn AuditSink>,
    pub(crate) releases: crate::releases::ReleaseKey,
    /// The orgs' limits (nodes), from the identity service.
    org_limits: Option<Arc<lattice_core::limits::OrgLimits>>,
}

/// A join token as created.
#[derive(Debug, Clone)]
pub struct NewJoinToken {
    pub id: String,
    pub token: String,
    pub expires_at_ms: i64,
    pub labels: BTreeMap<String, String>,
}

pub(crate) fn require(p: &Principal, scope: &str) -> Result<(), TunnelError> {
    if p.allows(scope) {
        Ok(())
    } else {
        Err(TunnelError::MissingScope(scope.into()))
    }
}

pub(crate) fn check_id(field: &str, id: &str) -> Result<(), TunnelError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(TunnelError::Invalid(format!(
            "{field}: {id:?} is not a node id"
        )));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), TunnelError> {
    if labels.len() > 64 {
        return Err(TunnelError::Invalid("labels: at most 64".into()));
    }
    for (k, v) in labels {
        let ok_key = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !ok_key {
            return Err(TunnelError::Invalid(format!(
                "labels: key {k:?} must be 1-63 of a-z, 0-9, '-', '_', '.', '/'"
            )));
        }
        if v.len() > 255 || v.chars().any(char::is_control) {
            return Err(TunnelError::Invalid(format!(
                "labels.{k}: at most 255 printable characters"
            )));
        }
    }
    Ok(())
}

impl Nodes {
    /// Over `store`, recording audit events in its own table.
    pub fn new(store: Store, settings: Settings) -> Self {
        let audit = Arc::new(TableAudit::new(store.db().clone(), "tunnel_audit"));
        Self {
            store,
            settings,
            audit,
            releases: crate::releases::ReleaseKey::default(),
            org_limits: None,
        }
    }

    /// Enforce the orgs' `max_nodes` read through `limits`.
    #[must_use]
    pub fn with_org_limits(mut self, limits: Arc<lattice_core::limits::OrgLimits>) -> Self {
        self.org_limits = Some(limits);
        self
    }

    /// Refuse another node for `org_id` when it has `max_nodes` already (checked
    /// when a join token is made and again when one is spent).
    async fn check_node_limit(&self, org_id: &str) -> Result<(), TunnelError> {
        let Some(limits) = &self.org_limits else {
            return Ok(());
        };
        let max = limits
            .of(org_id)
            .await
            .map_err(|s| {
                TunnelError::Unavailable(format!("reading the org's limits: {}", s.message()))
            })?
            .max_nodes;
        if max > 0 && self.store.count_nodes(org_id).await? >= max {
            return Err(TunnelError::LimitExceeded(format!(
                "the org's limit max_nodes ({max}) is reached: delete a node, or ask a platform admin to raise the limit"
            )));
        }
        Ok(())
    }

    /// Seal the release signing key with `sealer` (without one, releases cannot
    /// be uploaded and enrollment pins no key).
    #[must_use]
    pub fn with_sealer(mut self, sealer: lattice_core::crypto::Sealer) -> Self {
        self.releases = crate::releases::ReleaseKey::new(sealer);
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Record that `actor` did `action` to `target` (`ok`: it succeeded).
    pub(crate) async fn record(
        &self,
        actor: Actor<'_>,
        action: &str,
        target: &str,
        ok: bool,
        detail: serde_json::Value,
    ) {
        let outcome = if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let event = actor.event(action, target, outcome, &detail);
        if let Err(err) = self.audit.record(event).await {
            tracing::error!(error = %format!("{err:#}"), action, "audit record failed");
        }
    }

    /// A single-use join token (`nodes:write`).
    pub async fn create_join_token(
        &self,
        ctx: &RequestContext,
        labels: BTreeMap<String, String>,
        expires_in_s: i64,
        server_url: &str,
        ca_sha256: &str,
    ) -> Result<NewJoinToken, TunnelError> {
        let p = &ctx.principal;
        require(p, "nodes:write")?;
        check_labels(&labels)?;
        self.check_node_limit(&p.org_id).await?;
        let ttl = if expires_in_s == 0 {
            3600
        } else {
            expires_in_s
        };
        if !(60..=self.settings.join_token_max_ttl_s).contains(&ttl) {
            return Err(TunnelError::Invalid(format!(
                "expires_in_s: must be 60..{} seconds",
                self.settings.join_token_max_ttl_s
            )));
        }
        if !(server_url.starts_with("https://") || server_url.starts_with("http://")) {
            return Err(TunnelError::Invalid(
                "server_url: must be an http(s) URL".into(),
            ));
        }
        let ca = ca_sha256.replace(':', "").to_ascii_lowercase();
        if !ca.is_empty() && (ca.len() != 64 || !ca.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(TunnelError::Invalid(
                "ca_sha256: must be a SHA-256 in hex".into(),
            ));
        }
        let secret = random_secret("");
        let id = uuid::Uuid::now_v7().to_string();
        let expires_at_ms = now_ms() + ttl * 1000;
        self.store
            .create_join_token(
                &id,
                &p.org_id,
                &hash_secret(&secret),
                &labels,
                &p.sub,
                expires_at_ms,
            )
            .await?;
        let token = JoinToken {
            server_url: server_url.to_owned(),
            ca_sha256: (!ca.is_empty()).then(|| ca.clone()),
            secret: secret.clone(),
        }
        .encode();
        self.record(
            Actor::of(ctx),
            "node.join_token.create",
            &id,
            true,
            serde_json::json!({"expires_at_ms": expires_at_ms, "labels": labels}),
        )
        .await;
        Ok(NewJoinToken {
            id,
            token,
            expires_at_ms,
            labels,
        })
    }

    /// Exchange a join secret for the node's credential.
    pub async fn enroll(
        &self,
        ip: &str,
        join_secret: &str,
        facts: agent::HostFacts,
    ) -> Result<(NodeRow, String), TunnelError> {
        if join_secret.is_empty() || join_secret.len() > 200 {
            return Err(TunnelError::Unauthenticated(
                "join token is not valid".into(),
            ));
        }
        if facts.hostname.is_empty() || facts.hostname.len() > 253 {
            return Err(TunnelError::Invalid(
                "facts.hostname: 1-253 characters".into(),
            ));
        }
        if let Some(org_id) = self.store.join_token_org(&hash_secret(join_secret)).await? {
            self.check_node_limit(&org_id).await?;
        }
        let node_id = uuid::Uuid::now_v7().to_string();
        let token = random_secret("lnt_");
        match self
            .store
            .enroll(
                &hash_secret(join_secret),
                &node_id,
                &hash_secret(&token),
                &facts,
            )
            .await
        {
            Ok(node) => {
                self.record(
                    Actor {
                        org_id: &node.org_id,
                        id: &format!("node:{node_id}"),
                        client_ip: ip,
                    },
                    "node.enroll",
                    &node_id,
                    true,
                    serde_json::json!({"hostname": facts.hostname}),
                )
                .await;
                Ok((node, token))
            }
            Err(e) => {
                if let TunnelError::Unauthenticated(why) = &e {
                    self.record(
                        Actor {
                            org_id: "",
                            id: "anonymous",
                            client_ip: ip,
                        },
                        "node.enroll",
                        "",
                        false,
                        serde_json::json!({"reason": why, "hostname": facts.hostname}),
                    )
                    .await;
                }
                Err(e)
            }
        }
    }

    /// The node a node token belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<NodeRow, TunnelError> {
        if !token.starts_with("lnt_") || token.len() > 200 {
            return Err(TunnelError::Unauthenticated(
                "node token is not valid".into(),
            ));
        }
        self.store
            .node_by_token(&hash_secret(token))
            .await?
            .ok_or_else(|| {
                TunnelError::Unauthenticated(
                    "node token is not valid (revoked or never issued)".into(),
                )
            })
    }

    /// Nodes of the caller's org (`nodes:read`).
    pub async fn list(&self, p: &Principal) -> Result<Vec<NodeRow>, TunnelError> {
        if !p.is_service_in_org() {
            require(p, "nodes:read")?;
        }
        self.store.nodes(&p.org_id).await
    }

    /// One node (`nodes:read`; `nodes:proxy` also sees the node it reaches).
    pub async fn get(&self, p: &Principal, id: &str) -> Result<NodeRow, TunnelError> {
        check_id("id", id)?;
        if !(p.is_service_in_org()
            || p.allows("nodes:read")
            || p.allows("nodes:proxy")
            || p.allows("tasks:write"))
        {
            return Err(TunnelError::MissingScope("nodes:read".into()));
        }
        self.store.node(Some(&p.org_id), id).await
    }

    /// Change capabilities / labels (`nodes:write`).
    pub async fn update(
        &self,
        ctx: &RequestContext,
        id: &str,
        capabilities: Option<Vec<String>>,
        labels: Option<BTreeMap<String, String>>,
    ) -> Result<NodeRow, TunnelError> {
        let p = &ctx.principal;
        require(p, "nodes:write")?;
        check_id("id", id)?;
        let caps = match capabilities {
            None => None,
            Some(mut caps) => {
                for c in &caps {
                    if !CAPABILITIES.contains(&c.as_str()) {
                        return Err(TunnelError::Invalid(format!(
                            "capabilities: unknown capability {c:?} (known: {})",
                            CAPABILITIES.join(", ")
                        )));
                    }
                }
                caps.sort();
                caps.dedup();
                Some(caps)
            }
        };
        if let Some(l) = &labels {
            check_labels(l)?;
        }
        let node = self
            .store
            .update_node(&p.org_id, id, caps.as_deref(), labels.as_ref())
            .await?;
        self.record(
            Actor::of(ctx),
            "node.update",
            id,
            true,
            serde_json::json!({"capabilities": caps, "labels": labels}),
        )
        .await;
        Ok(node)
    }

    /// What the tunnel holds of an org (`orgs:admin`): nodes, live join tokens.
    pub async fn org_usage(
        &self,
        ctx: &RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, TunnelError> {
        require(&ctx.principal, "orgs:admin")?;
        self.store.org_usage(org_id).await
    }

    /// Forget every node and join token of an org (`orgs:admin`): the counts
    /// removed, and the nodes' ids (their agents are disconnected by the caller).
    pub async fn purge_org(
        &self,
        ctx: &RequestContext,
        org_id: &str,
    ) -> Result<(std::collections::BTreeMap<String, i64>, Vec<String>), TunnelError> {
        require(&ctx.principal, "orgs:admin")?;
        let (nodes, joins) = self.store.purge_org(org_id).await?;
        let mut removed = std::collections::BTreeMap::new();
        if !nodes.is_empty() {
            removed.insert(
                "nodes".to_owned(),
                i64::try_from(nodes.len()).unwrap_or(i64::MAX),
            );
        }
        if joins > 0 {
            removed.insert(
                "join_tokens".to_owned(),
                i64::try_from(joins).unwrap_or(i64::MAX),
            );
        }
        self.record(
            Actor::in_org(ctx, org_id),
            "org.purge",
            org_id,
            true,
            serde_json::json!({"removed": removed}),
        )
        .await;
        Ok((removed, nodes))
    }

    /// Forget a node (`nodes:write`).
    pub async fn delete(&self, ctx: &RequestContext, id: &str) -> Result<(), TunnelError> {
        let p = &ctx.principal;
        require(p, "nodes:write")?;
        check_id("id", id)?;
        self.store.delete_node(&p.org_id, id).await?;
        self.record(
            Actor::of(ctx),
            "node.delete",
            id,
            true,
            serde_json::json!({}),
        )
        .await;
        Ok(())
    }

    /// Ask a connected node's agent to reconnect (`nodes:write`), to `url` when it is
    /// not empty. Returns the node; the replica holding its stream acts on it.
    pub async fn reconnect(
        &self,
        ctx: &RequestContext,
        id: &str,
        url: &str,
        reason: &str,
    ) -> Result<NodeRow, TunnelError> {
        let p = &ctx.principal;
        require(p, "nodes:write")?;
        check_id("id", id)?;
        check_server_url(url, &self.settings.agent_hosts)?;
        if reason.chars().count() > 200 || reason.chars().any(char::is_control) {
            return Err(TunnelError::Invalid(
                "reason: at most 200 characters, no control characters".into(),
            ));
        }
        let node = self.store.node(Some(&p.org_id), id).await?;
        if node.status != "connected" {
            return Err(TunnelError::NotConnected(format!(
                "node {id} is not connected (status {})",
                node.status
            )));
        }
        self.record(
            Actor::of(ctx),
            "node.reconnect",
            id,
            true,
            serde_json::json!({"url": url, "reason": reason}),
        )
        .await;
        Ok(node)
    }

    /// Samples (`nodes:read`).
    pub async fn metrics(
        &self,
        p: &Principal,
        id: &str,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<agent::MetricsSample>, TunnelError> {
        let node = self.get(p, id).await?;
        require(p, "nodes:read")?;
        let limit = if limit <= 0 { 1000 } else { limit.min(10_000) };
        self.store.metrics(&node.id, since_ms, limit).await
    }

    /// Log lines (`nodes:read`).
    pub async fn logs(
        &self,
        p: &Principal,
        id: &str,
        since_ms: i64,
        unit: &str,
        q: &str,
        limit: i64,
    ) -> Result<Vec<agent::LogEntry>, TunnelError> {
        let node = self.get(p, id).await?;
        require(p, "nodes:read")?;
        if unit.len() > 256 || q.len() > 256 {
            return Err(TunnelError::Invalid(
                "unit, q: at most 256 characters".into(),
            ));
        }
        let limit = if limit <= 0 { 1000 } else { limit.min(10_000) };
        self.store.logs(&node.id, since_ms, unit, q, limit).await
    }

    /// The org's latest metric values in Prometheus text format (`nodes:read`).
    pub async fn fleet_metrics(&self, p: &Principal) -> Result<String, TunnelError> {
        let nodes = self.list(p).await?;
        Ok(prometheus_text(&nodes))
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render the latest sample of every node.
pub fn prometheus_text(nodes: &[NodeRow]) -> String {
    let mut out = String::new();
    type Get = fn(&agent::MetricsSample) -> f64;
    let gauges: [(&str, &str, Get); 6] = [
        (
            "lattice_node_cpu_percent",
            "Busy share of all CPUs over the last interval, percent.",
            |s| s.cpu_percent,
        ),
        ("lattice_node_load1", "1-minute load average.", |s| s.load1),
        ("lattice_node_load5", "5-minute load average.", |s| s.load5),
        ("lattice_node_load15", "15-minute load average.", |s| {
            s.load15
        }),
        ("lattice_node_memory_total_bytes", "Physical memory.", |s| {
            s.memory_total_bytes as f64
        }),
        (
            "lattice_node_memory_available_bytes",
            "Memory available for new work.",
            |s| s.memory_available_bytes as f64,
        ),
    ];
    let base = |n: &NodeRow| format!("node=\"{}\",hostname=\"{}\"", esc(&n.id), esc(&n.hostname));
    let _ = writeln!(
        out,
        "# HELP lattice_node_up Whether the node's agent is connected."
    );
    let _ = writeln!(out, "# TYPE lattice_node_up gauge");
    for n in nodes {
        let _ = writeln!(
            out,
            "lattice_node_up{{{}}} {}",
            base(n),
            u8::from(n.status == "connected")
        );
    }
    let _ = writeln!(
        out,
        "# HELP lattice_node_last_seen_timestamp_seconds When the agent was last heard from."
    );
    let _ = writeln!(out, "# TYPE lattice_node_last_seen_timestamp_seconds gauge");
    for n in nodes {
        let _ = writeln!(
            out,
            "lattice_node_last_seen_timestamp_seconds{{{}}} {}",
            base(n),
            n.last_seen_ms as f64 / 1000.0
        );
    }
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for n in nodes {
            if let Some(s) = &n.last_metrics {
                let _ = writeln!(out, "{name}{{{}}} {}", base(n), get(s));
            }
        }
    }
    for (name, help, used) in [
        (
            "lattice_node_disk_used_bytes",
            "Used bytes of a filesystem.",
            true,
        ),
        (
            "lattice_node_disk_total_bytes",
            "Size of a filesystem.",
            false,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for n in nodes {
            for d in n.last_metrics.iter().flat_map(|s| &s.disks) {
                let v = if used { d.used_bytes } else { d.total_bytes };
                let _ = writeln!(out, "{name}{{{},mount=\"{}\"}} {v}", base(n), esc(&d.mount));
            }
        }
    }
    for (name, help, rx) in [
        (
            "lattice_node_network_receive_bytes_total",
            "Bytes received by an interface.",
            true,
        ),
        (
            "lattice_node_network_transmit_bytes_total",
            "Bytes sent by an interface.",
            false,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for n in nodes {
            for i in n.last_metrics.iter().flat_map(|s| &s.net) {
                let v = if rx { i.rx_bytes } else { i.tx_bytes };
                let _ = writeln!(
                    out,
                    "{name}{{{},interface=\"{}\"}} {v}",
                    base(n),
                    esc(&i.interface)
                );
            }
        }
    }
    out
}

/// A server URL an agent is sent to: `https://host[:port]`, optionally with a path,
/// no credentials, query or fragment, on one of `allowed` hosts (the deployment's
/// own: a node token must go to no other server). Empty means "the same server".
pub fn check_server_url(url: &str, allowed: &[String]) -> Result<(), TunnelError> {
    if url.is_empty() {
        return Ok(());
    }
    let bad = |why: &str| TunnelError::Invalid(format!("url: {why} (got {url:?})"));
    if url.len() > 2048 {
        return Err(bad("at most 2048 bytes"));
    }
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("must start with https:// (agents move only to HTTPS)"));
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad("must not carry credentials"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    if !allowed
        .iter()
        .any(|h| h.trim_start_matches('[').trim_end_matches(']') == host)
    {
        return Err(bad(&format!(
            "host {host} is not in tunnel.agent_hosts (the hosts this deployment lets operators send agents to: {})",
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            }
        )));
    }
    Ok(())
}
