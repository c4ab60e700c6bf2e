//! The policy service's domain: policies per org (validated, audited, announced on
//! the bus) and decisions over them.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use lattice_core::audit::{Actor, AuditSink, Outcome};
use lattice_core::auth::RequestContext;
use lattice_core::cache::Cache;
use lattice_core::time::now_ms;
use lattice_proto::events::v1::PoliciesChanged;

use crate::engine::{Action, Decision, Engine, Principal, Query, Resource};
use crate::error::PolicyError;
use crate::model::{self, PolicyDoc, Problem};
use crate::store::{PolicyRow, Store};

/// Where a user's groups come from (the identity service).
#[async_trait::async_trait]
pub trait GroupDirectory: Send + Sync + std::fmt::Debug {
    /// The names of the groups `username` of `org` is in.
    async fn groups_of(
        &self,
        ctx: &RequestContext,
        org: &str,
        username: &str,
    ) -> Result<Vec<String>, PolicyError>;

    /// Forget what is cached about `org` (its membership changed).
    fn forget(&self, _org: &str) {}

    /// Forget everything cached.
    fn forget_all(&self) {}
}

/// The policy service.
#[derive(Debug, Clone)]
pub struct Policies {
    store: Store,
    cache: Cache,
    audit: Arc<dyn AuditSink>,
    groups: Arc<dyn GroupDirectory>,
    nodes: Arc<dyn crate::nodes::NodeDirectory>,
    /// org -> its decisions. Rebuilt after a change (the bus tells every replica).
    engines: moka::sync::Cache<String, Arc<Engine>>,
    /// org -> the newest questions this replica decided, for dry runs.
    log:
        Arc<std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<Query>>>>,
}

/// Questions kept per org for dry runs (per replica).
pub const DECISION_LOG: usize = 10_000;
/// Flips listed in a dry run's answer (the counts are complete).
pub const MAX_FLIPS: usize = 100;

/// One recorded decision a change would flip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flip {
    /// The question.
    pub query: Query,
    /// The decision now.
    pub before: Decision,
    /// The decision with the change.
    pub after: Decision,
}

/// What a dry run found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DryRun {
    /// Decisions replayed.
    pub replayed: usize,
    /// Allowed now, denied with the change.
    pub allow_to_deny: usize,
    /// Denied now, allowed with the change.
    pub deny_to_allow: usize,
    /// The first [`MAX_FLIPS`] flips, newest first.
    pub flips: Vec<Flip>,
}

/// Who a decision is about, as the caller names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The request's own principal.
    Caller,
    /// A storage token or node a service acts for, in `org`.
    Service {
        /// `storage_token` or `node`.
        kind: &'static str,
        /// Token name or node id.
        name: String,
        /// Its org.
        org: String,
    },
}

fn require(ctx: &RequestContext, scope: &str) -> Result<(), PolicyError> {
    if ctx.principal.allows(scope) {
        Ok(())
    } else {
        Err(PolicyError::MissingScope(scope.to_owned()))
    }
}

impl Policies {
    /// Over a migrated store.
    pub fn new(
        store: Store,
        cache: Cache,
        groups: Arc<dyn GroupDirectory>,
        nodes: Arc<dyn crate::nodes::NodeDirectory>,
    ) -> Self {
        let audit = Arc::new(lattice_core::audit::TableAudit::new(
            store.db().clone(),
            "policy_audit",
        ));
        Self {
            store,
            cache,
            audit,
            groups,
            nodes,
            log: Arc::default(),
            engines: moka::sync::Cache::builder()
                .max_capacity(10_000)
                // A backstop: the bus evicts on every change.
                .time_to_live(Duration::from_secs(300))
                .build(),
        }
    }

    /// The store (tests, readiness).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What the policy service holds of an org (`orgs:admin`).
    pub async fn org_usage(
        &self,
        ctx: &RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, PolicyError> {
        require(ctx, "orgs:admin")?;
        Ok(self.store.org_usage(org_id).await?)
    }

    /// Delete an org's policies, intents and plans (`orgs:admin`); its audit trail
    /// stays. Every replica forgets the org's decisions.
    pub async fn purge_org(
        &self,
        ctx: &RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, PolicyError> {
        require(ctx, "orgs:admin")?;
        let removed = self.store.purge_org(org_id).await?;
        self.changed(org_id).await;
        self.audit(
            Actor::in_org(ctx, org_id),
            "org.purge",
            org_id,
            Outcome::Success,
            serde_json::json!({"removed": removed}),
        )
        .await;
        Ok(removed)
    }

    /// Forget `org`'s decisions in this replica.
    pub fn forget(&self, org: &str) {
        self.engines.invalidate(org);
    }

    /// Forget every org's decisions in this replica.
    pub fn forget_all(&self) {
        self.engines.invalidate_all();
    }

    /// Forget cached group membership of `org` in this replica.
    pub fn forget_groups(&self, org: &str) {
        self.groups.forget(org);
    }

    /// Forget all cached group membership in this replica.
    pub fn forget_all_groups(&self) {
        self.groups.forget_all();
    }

    async fn audit(
        &self,
        actor: Actor<'_>,
        action: &str,
        target: &str,
        outcome: Outcome,
        detail: serde_json::Value,
    ) {
        let event = actor.event(action, target, outcome, &detail);
        if let Err(err) = self.audit.record(event).await {
            tracing::error!(error = %format!("{err:#}"), action, "recording audit event failed");
        }
    }

    async fn changed(&self, org: &str) {
        self.forget(org);
        self.cache
            .announce(&PoliciesChanged {
                org_id: org.to_owned(),
            })
            .await;
    }

    /// `org`'s engine: built from its stored policies (seeding the org on first sight).
    pub async fn engine(&self, org: &str) -> Result<Arc<Engine>, PolicyError> {
        if let Some(e) = self.engines.get(org) {
            return Ok(e);
        }
        if self.store.seed_once(org).await? {
            tracing::info!(org, "seeded the admins policy");
            let actor = Actor {
                org_id: org,
                id: "system",
                client_ip: "",
            };
            self.audit(
                actor,
                "policy.seed",
                crate::store::SEEDED_NAME,
                Outcome::Success,
                serde_json::json!({"new_sha256": crate::store::text_hash(crate::store::SEEDED_TEXT)}),
            )
            .await;
        }
        let rows = self.store.list(org).await?;
        let mut docs = Vec::with_capacity(rows.len());
        for r in rows {
            match model::compile(&r.doc.name, &r.doc.text) {
                Ok(statements) => docs.push((r.doc, statements)),
                Err(problems) => tracing::warn!(
                    org,
                    policy = r.doc.name,
                    problems = model::describe(&problems),
                    "a stored policy no longer validates; it takes part in no decision"
                ),
            }
        }
        let engine = Arc::new(Engine::new(docs));
        self.engines.insert(org.to_owned(), engine.clone());
        Ok(engine)
    }

    /// The caller's org's policies.
    pub async fn list(&self, ctx: &RequestContext) -> Result<Vec<PolicyRow>, PolicyError> {
        require(ctx, "policy:read")?;
        let org = &ctx.principal.org_id;
        // Listing shows the seeded policy even before the first decision.
        self.engine(org).await?;
        Ok(self.store.list(org).await?)
    }

    /// One policy.
    pub async fn get(&self, ctx: &RequestContext, name: &str) -> Result<PolicyRow, PolicyError> {
        require(ctx, "policy:read")?;
        model::check_name(name).map_err(PolicyError::Invalid)?;
        let org = &ctx.principal.org_id;
        self.engine(org).await?;
        self.store
            .get(org, name)
            .await?
            .ok_or_else(|| PolicyError::NotFound(format!("policy {name:?}")))
    }

    /// Check `text` without storing it: the number of statements, or the problems.
    pub fn validate(
        &self,
        ctx: &RequestContext,
        text: &str,
    ) -> Result<Result<usize, Vec<Problem>>, PolicyError> {
        if !(ctx.principal.allows("policy:read") || ctx.principal.allows("policy:write")) {
            return Err(PolicyError::MissingScope("policy:read".into()));
        }
        Ok(model::compile("candidate", text).map(|s| s.len()))
    }

    /// Create (`create_only`) or replace a policy. Refused with every problem when
    /// its text does not validate; nothing is stored then.
    pub async fn put(
        &self,
        ctx: &RequestContext,
        doc: PolicyDoc,
        create_only: bool,
    ) -> Result<(PolicyRow, bool), PolicyError> {
        require(ctx, "policy:write")?;
        model::check_name(&doc.name).map_err(PolicyError::Invalid)?;
        if doc.description.len() > 1024 {
            return Err(PolicyError::Invalid(
                "description: at most 1024 bytes".into(),
            ));
        }
        let org = &ctx.principal.org_id;
        let actor = Actor::of(ctx);
        if let Err(problems) = model::compile(&doc.name, &doc.text) {
            let message = model::describe(&problems);
            self.audit(
                actor,
                "policy.put",
                &doc.name,
                Outcome::Failure,
                serde_json::json!({"error": &message, "new_sha256": crate::store::text_hash(&doc.text)}),
            )
            .await;
            return Err(PolicyError::Rejected(message));
        }
        // Seed first, so that a policy the admin writes is never shadowed by a
        // later first-sight seeding.
        self.engine(org).await?;
        if create_only && self.store.get(org, &doc.name).await?.is_some() {
            return Err(PolicyError::Conflict(format!(
                "policy {:?} already exists",
                doc.name
            )));
        }
        let by = if ctx.principal.username.is_empty() {
            ctx.principal.sub.clone()
        } else {
            ctx.principal.username.clone()
        };
        let (row, old) = self.store.put(org, &doc, &by).await?;
        self.audit(
            actor,
            if old.is_some() {
                "policy.update"
            } else {
                "policy.create"
            },
            &doc.name,
            Outcome::Success,
            serde_json::json!({
                "old_sha256": old.as_ref().map(|o| o.text_sha256.clone()),
                "new_sha256": row.text_sha256,
                "enabled": doc.enabled,
                "priority": doc.priority,
                "expires_at_ms": doc.expires_at_ms,
            }),
        )
        .await;
        self.changed(org).await;
        Ok((row, old.is_none()))
    }

    /// Delete a policy.
    pub async fn delete(&self, ctx: &RequestContext, name: &str) -> Result<(), PolicyError> {
        require(ctx, "policy:write")?;
        model::check_name(name).map_err(PolicyError::Invalid)?;
        let org = &ctx.principal.org_id;
        self.engine(org).await?;
        let Some(old) = self.store.delete(org, name).await? else {
            return Err(PolicyError::NotFound(format!("policy {name:?}")));
        };
        self.audit(
            Actor::of(ctx),
            "policy.delete",
            name,
            Outcome::Success,
            serde_json::json!({"old_sha256": old.text_sha256}),
        )
        .await;
        self.changed(org).await;
        Ok(())
    }

    /// Decide whether `subject` may do `action` to `resource`. Refusals and secret
    /// reads are audited with the policies that decided.
    pub async fn authorize(
        &self,
        ctx: &RequestContext,
        subject: Subject,
        action: Action,
        resource: Resource,
    ) -> Result<Decision, PolicyError> {
        let p = &ctx.principal;
        let principal = match subject {
            Subject::Caller => {
                if p.is_service() || p.username.is_empty() {
                    return Err(PolicyError::Invalid(
                        "a service asking about a storage token or node names it (service)".into(),
                    ));
                }
                Principal::User {
                    name: p.username.clone(),
                    org: p.org_id.clone(),
                    groups: self.groups.groups_of(ctx, &p.org_id, &p.username).await?,
                }
            }
            Subject::Service { kind, name, org } => {
                if !p.is_service() {
                    return Err(PolicyError::Forbidden(
                        "only a service may ask on behalf of a storage token or node".into(),
                    ));
                }
                Principal::Service {
                    kind: kind.to_owned(),
                    name,
                    org,
                }
            }
        };
        let org = match &principal {
            Principal::User { org, .. } | Principal::Service { org, .. } => org.clone(),
        };
        if org.is_empty() {
            return Err(PolicyError::Invalid(
                "org: the principal's org is unknown".into(),
            ));
        }
        let resource = match resource {
            Resource::Node {
                id, name, labels, ..
            } => Resource::Node {
                id,
                name,
                org: org.clone(),
                labels,
            },
            other => other,
        };
        let query = Query {
            principal,
            action,
            resource,
        };
        let engine = self.engine(&org).await?;
        let decision = engine.decide(&query, now_ms());
        self.remember(&org, &query);
        if !decision.allow || matches!(query.action, Action::AccessSecret) {
            let principal_uid = query.principal.uid().to_string();
            let actor_id = match &query.principal {
                Principal::User { .. } => p.sub.clone(),
                Principal::Service { kind, name, .. } => crate::engine::service_id(kind, name),
            };
            let actor = Actor {
                org_id: &org,
                id: &actor_id,
                client_ip: &ctx.client_ip,
            };
            self.audit(
                actor,
                &format!("policy.decide.{}", query.action.name()),
                &query.resource.uid().to_string(),
                if decision.allow {
                    Outcome::Success
                } else {
                    Outcome::Failure
                },
                serde_json::json!({
                    "principal": principal_uid,
                    "decision": if decision.allow { "allow" } else { "deny" },
                    "policies": decision.determining,
                    "context": context_json(&query.action),
                }),
            )
            .await;
        }
        Ok(decision)
    }
}

/// A question's context as JSON (audit details, reports).
pub fn context_json(a: &Action) -> serde_json::Value {
    match a {
        Action::AccessNode { port, protocol } => {
            serde_json::json!({"port": port, "protocol": protocol.as_str()})
        }
        Action::RunTask { kind } => serde_json::json!({"kind": kind}),
        _ => serde_json::json!({}),
    }
}

/// What `explain` is asked, as an operator writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainInput {
    /// `Lattice::User::"alice"` or `Lattice::Service::"token:deploy"`.
    pub principal: String,
    /// `Lattice::Action::"AccessNode"` or `AccessNode`.
    pub action: String,
    /// `Lattice::Node::"<id>"`, `Lattice::SecretPath::"bucket/key"`, ...
    pub resource: String,
    /// The context.
    pub context: serde_json::Map<String, serde_json::Value>,
}

/// `Type` and `id` of a Cedar entity uid written `Lattice::Type::"id"`.
fn entity(field: &str, text: &str) -> Result<(String, String), PolicyError> {
    let uid = cedar_policy::EntityUid::from_str(text.trim()).map_err(|e| {
        PolicyError::Invalid(format!(
            "{field}: {text:?} is not a Cedar entity like Lattice::User::\"alice\" ({e})"
        ))
    })?;
    let ty = uid.type_name().to_string();
    let Some(short) = ty.strip_prefix("Lattice::") else {
        return Err(PolicyError::Invalid(format!(
            "{field}: {ty} is not a Lattice entity type"
        )));
    };
    Ok((short.to_owned(), uid.id().unescaped().to_owned()))
}

impl Policies {
    /// Explain the decision on a question written by hand, in the caller's org: the
    /// answer, the deciding policies and those considered. Nothing is audited: it
    /// grants nothing.
    pub async fn explain(
        &self,
        ctx: &RequestContext,
        input: ExplainInput,
    ) -> Result<Decision, PolicyError> {
        require(ctx, "policy:read")?;
        let org = ctx.principal.org_id.clone();
        let bad = |m: String| PolicyError::Invalid(m);
        let principal = match entity("principal", &input.principal)? {
            (ty, name) if ty == "User" => Principal::User {
                groups: self.groups.groups_of(ctx, &org, &name).await?,
                name,
                org: org.clone(),
            },
            (ty, id) if ty == "Service" => {
                let (kind, name) = match id.split_once(':') {
                    Some(("token", n)) => ("storage_token", n),
                    Some(("node", n)) => ("node", n),
                    _ => {
                        return Err(bad(format!(
                            "principal: a service is token:<name> or node:<id>, not {id:?}"
                        )));
                    }
                };
                Principal::Service {
                    kind: kind.into(),
                    name: name.into(),
                    org: org.clone(),
                }
            }
            (ty, _) => return Err(bad(format!("principal: a User or a Service, not {ty}"))),
        };
        let action_name = input.action.trim();
        let action_name = action_name
            .strip_prefix("Lattice::Action::")
            .map_or(action_name, |a| a.trim_matches('"'));
        let int = |k: &str| input.context.get(k).and_then(serde_json::Value::as_i64);
        let string = |k: &str| input.context.get(k).and_then(serde_json::Value::as_str);
        let action = match action_name {
            "AccessNode" => Action::AccessNode {
                port: int("port")
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("context.port: 1-65535 for AccessNode".into()))?,
                protocol: match string("protocol").unwrap_or("http") {
                    "http" => crate::engine::Protocol::Http,
                    "tcp" => crate::engine::Protocol::Tcp,
                    other => {
                        return Err(bad(format!("context.protocol: http or tcp, not {other:?}")));
                    }
                },
            },
            "RunTask" => Action::RunTask {
                kind: string("kind")
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| bad("context.kind: the task kind for RunTask".into()))?
                    .to_owned(),
            },
            "AccessSecret" => Action::AccessSecret,
            "ApprovePlan" => Action::ApprovePlan,
            "AccessCluster" => Action::AccessCluster,
            other => {
                return Err(bad(format!(
                    "action: AccessNode, RunTask, AccessSecret, ApprovePlan or AccessCluster, not {other:?}"
                )));
            }
        };
        if matches!(principal, Principal::Service { .. }) && action != Action::AccessSecret {
            return Err(bad(format!(
                "principal: a Service only reads secrets (AccessSecret), it is never asked {}",
                action.name()
            )));
        }
        let (ty, id) = entity("resource", &input.resource)?;
        if ty != action.resource_type()
            && ["Node", "SecretPath", "Plan", "Cluster"].contains(&ty.as_str())
        {
            return Err(bad(format!(
                "resource: {} applies to a {}, not to a {ty}",
                action.name(),
                action.resource_type(),
            )));
        }
        let resource = match (ty, id) {
            (ty, id) if ty == "Node" => {
                let (name, labels) = self.nodes.node(ctx, &id).await?;
                Resource::Node {
                    id,
                    name,
                    org: org.clone(),
                    labels,
                }
            }
            (ty, path) if ty == "SecretPath" => {
                let (bucket, key) = path.split_once('/').ok_or_else(|| {
                    bad(format!(
                        "resource: a secret path is bucket/key, not {path:?}"
                    ))
                })?;
                Resource::SecretPath {
                    bucket: bucket.into(),
                    key: key.into(),
                }
            }
            (ty, id) if ty == "Plan" => Resource::Plan {
                id,
                kind: string("plan_kind").unwrap_or_default().into(),
                node: string("plan_node").unwrap_or_default().into(),
                author: string("plan_author").unwrap_or_default().into(),
            },
            (ty, name) if ty == "Cluster" => Resource::Cluster { name },
            (ty, _) => {
                return Err(bad(format!(
                    "resource: a Node, SecretPath, Plan or Cluster, not {ty}"
                )));
            }
        };
        let query = Query {
            principal,
            action,
            resource,
        };
        let engine = self.engine(&org).await?;
        Ok(engine.decide(&query, now_ms()))
    }
}

impl Policies {
    fn remember(&self, org: &str, q: &Query) {
        let mut log = self.log.lock().expect("decision log lock");
        let entries = log.entry(org.to_owned()).or_default();
        if entries.len() >= DECISION_LOG {
            entries.pop_front();
        }
        entries.push_back(q.clone());
    }

    /// Replay the newest `last` recorded decisions of the caller's org against the
    /// policies as they are and as they would be with `put` added or replaced and
    /// `delete` removed: the decisions that would flip. Nothing is stored.
    pub async fn dry_run(
        &self,
        ctx: &RequestContext,
        put: Vec<PolicyDoc>,
        delete: Vec<String>,
        last: usize,
    ) -> Result<DryRun, PolicyError> {
        require(ctx, "policy:write")?;
        let org = ctx.principal.org_id.clone();
        let mut changed = std::collections::BTreeMap::new();
        for d in put {
            model::check_name(&d.name).map_err(PolicyError::Invalid)?;
            let statements = model::compile(&d.name, &d.text).map_err(|p| {
                PolicyError::Rejected(format!("{}: {}", d.name, model::describe(&p)))
            })?;
            changed.insert(d.name.clone(), (d, statements));
        }
        for name in &delete {
            model::check_name(name).map_err(PolicyError::Invalid)?;
        }
        let current = self.engine(&org).await?;
        let mut docs = Vec::new();
        for r in self.store.list(&org).await? {
            if delete.contains(&r.doc.name) || changed.contains_key(&r.doc.name) {
                continue;
            }
            if let Ok(statements) = model::compile(&r.doc.name, &r.doc.text) {
                docs.push((r.doc, statements));
            }
        }
        docs.extend(changed.into_values());
        let candidate = Engine::new(docs);
        let questions: Vec<Query> = {
            let log = self.log.lock().expect("decision log lock");
            let entries = log.get(&org);
            let n = if last == 0 {
                DECISION_LOG
            } else {
                last.min(DECISION_LOG)
            };
            entries
                .map(|e| e.iter().rev().take(n).cloned().collect())
                .unwrap_or_default()
        };
        let now = now_ms();
        let mut out = DryRun {
            replayed: questions.len(),
            ..DryRun::default()
        };
        for q in questions {
            let before = current.decide(&q, now);
            let after = candidate.decide(&q, now);
            if before.allow == after.allow {
                continue;
            }
            if before.allow {
                out.allow_to_deny += 1;
            } else {
                out.deny_to_allow += 1;
            }
            if out.flips.len() < MAX_FLIPS {
                out.flips.push(Flip {
                    query: q,
                    before,
                    after,
                });
            }
        }
        Ok(out)
    }
}
