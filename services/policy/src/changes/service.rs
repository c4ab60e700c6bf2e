//! The reviewed-change workflow: intents (versioned), plans rendered per node
//! against what the node reports now, approval of the exact hash reviewed (scope,
//! Cedar `ApprovePlan`, four eyes, staleness), and the rollout: one apply task per
//! node on the task queue, canary first, halting on the first failure. Every step
//! is audited with the plan id and hash.

use std::collections::BTreeMap;
use std::sync::Arc;

use lattice_core::audit::{Actor, AuditSink, Outcome};
use lattice_core::auth::{Principal as Caller, RequestContext};
use lattice_core::time::now_ms;
use serde_json::{Value, json};

use super::store::{ChangeStore, IntentRow, PlanRow, TargetRow};
use super::update::Mode;
use super::{Base, Intent, Kind, Selector, Spec, Target, diff, plan_hash, target};
use crate::engine::{Action, Resource};
use crate::error::PolicyError;
use crate::service::{Policies, Subject};

/// The author and approver of the plans an auto update policy makes.
pub const AUTO: &str = "policy:auto";

/// How long a rendered plan may wait for approval.
pub const PLAN_TTL_MS: i64 = 3600 * 1000;

/// A node as the changes service needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// Id.
    pub id: String,
    /// What the agent last reported of each managed artifact (by name).
    pub artifacts: BTreeMap<String, Base>,
    /// Its architecture (`uname -m`), for agent releases.
    pub arch: String,
}

/// Where agent releases come from (the tunnel service, which signed them).
#[async_trait::async_trait]
pub trait Releases: Send + Sync {
    /// The signed manifest of release `version` for `arch`.
    async fn manifest(
        &self,
        ctx: &RequestContext,
        version: &str,
        arch: &str,
    ) -> Result<lattice_proto::release::Manifest, PolicyError>;
}

/// No release source: `agent.update` plans are refused.
#[derive(Debug, Clone, Copy)]
pub struct NoReleases;

#[async_trait::async_trait]
impl Releases for NoReleases {
    async fn manifest(
        &self,
        _: &RequestContext,
        _: &str,
        _: &str,
    ) -> Result<lattice_proto::release::Manifest, PolicyError> {
        Err(PolicyError::Unavailable(
            "agent releases: the tunnel service is not linked to this policy service".into(),
        ))
    }
}

/// Where nodes come from (the tunnel service).
#[async_trait::async_trait]
pub trait NodeStates: Send + Sync {
    /// The nodes of `ctx`'s org that `selector` names (a node id that is not one of
    /// them: `NotFound`).
    async fn select(
        &self,
        ctx: &RequestContext,
        selector: &Selector,
    ) -> Result<Vec<NodeState>, PolicyError>;
}

/// How an apply task ended, as far as the plan cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Queued or running.
    Pending,
    /// Done; the agent's result.
    Succeeded(String),
    /// Failed for good; the error and the agent's result.
    Failed(String, String),
}

/// Where apply tasks go (the tasks service).
#[async_trait::async_trait]
pub trait TaskQueue: Send + Sync {
    /// Queue `kind` for `node` of `org` (idempotent by `key`): the task id.
    async fn enqueue(
        &self,
        org: &str,
        node: &str,
        kind: &str,
        payload: Value,
        key: &str,
    ) -> Result<String, PolicyError>;

    /// How task `id` of `org` stands.
    async fn outcome(&self, org: &str, id: &str) -> Result<TaskOutcome, PolicyError>;
}

/// How many admins an org has (four eyes turns itself on at two).
#[async_trait::async_trait]
pub trait Admins: Send + Sync {
    /// Members of the org's `admins` group.
    async fn count(&self, ctx: &RequestContext) -> Result<usize, PolicyError>;
}

/// Whether an approver's second factor is fresh (the identity service).
#[async_trait::async_trait]
pub trait FreshMfa: Send + Sync {
    /// True when the caller has no TOTP, completed it within the last 5 minutes,
    /// or does now with `code`; false when a code is needed; `BadCode` for a wrong
    /// or reused one.
    async fn fresh(&self, ctx: &RequestContext, code: &str) -> Result<bool, PolicyError>;
}

/// A plan with its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The plan.
    pub plan: PlanRow,
    /// Its nodes.
    pub targets: Vec<TargetRow>,
}

/// The reviewed-change service.
#[derive(Clone)]
pub struct Changes {
    store: ChangeStore,
    policies: Policies,
    nodes: Arc<dyn NodeStates>,
    tasks: Arc<dyn TaskQueue>,
    admins: Arc<dyn Admins>,
    mfa: Arc<dyn FreshMfa>,
    audit: Arc<dyn AuditSink>,
    releases: Arc<dyn Releases>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

fn require(p: &Caller, scope: &str) -> Result<(), PolicyError> {
    if p.is_service() || p.username.is_empty() {
        return Err(PolicyError::Forbidden(
            "reviewed changes are made by people: an operator principal is needed".into(),
        ));
    }
    if p.allows(scope) {
        Ok(())
    } else {
        Err(PolicyError::MissingScope(scope.into()))
    }
}

fn intent_json(row: &IntentRow) -> Value {
    json!({
        "name": row.name,
        "kind": row.kind,
        "selector": serde_json::from_str::<Value>(&row.selector).unwrap_or(Value::Null),
        "spec": serde_json::from_str::<Value>(&row.spec).unwrap_or(Value::Null),
        "version": row.version,
        "created_at_ms": row.created_at_ms,
        "created_by": row.created_by,
    })
}

/// An intent row as JSON (the API's shape).
pub fn intent_to_json(row: &IntentRow) -> Value {
    intent_json(row)
}

impl Changes {
    /// The service over its tables and the services it asks.
    pub fn new(
        store: ChangeStore,
        policies: Policies,
        nodes: Arc<dyn NodeStates>,
        tasks: Arc<dyn TaskQueue>,
        admins: Arc<dyn Admins>,
        mfa: Arc<dyn FreshMfa>,
        audit: Arc<dyn AuditSink>,
    ) -> Self {
        Self {
            store,
            policies,
            nodes,
            tasks,
            admins,
            mfa,
            audit,
            releases: Arc::new(NoReleases),
        }
    }

    /// Agent releases come from `releases`.
    #[must_use]
    pub fn with_releases(mut self, releases: Arc<dyn Releases>) -> Self {
        self.releases = releases;
        self
    }

    async fn record(
        &self,
        ctx: &RequestContext,
        action: &str,
        target: &str,
        outcome: Outcome,
        detail: Value,
    ) {
        let event = Actor::of(ctx).event(action, target, outcome, &detail);
        if let Err(err) = self.audit.record(event).await {
            tracing::error!(error = %format!("{err:#}"), action, "recording audit event failed");
        }
    }

    /// Store a new version of an intent (`policy:write`); a bad document is 422
    /// naming every bad field, and nothing is stored.
    pub async fn put_intent(
        &self,
        ctx: &RequestContext,
        doc: &Value,
    ) -> Result<IntentRow, PolicyError> {
        require(&ctx.principal, "policy:write")?;
        let intent = Intent::parse(doc).map_err(|p| PolicyError::Rejected(p.to_string()))?;
        // An auto update policy approves its own plans: setting one is approving.
        if let Spec::AgentUpdate(u) = &intent.spec
            && u.mode == Mode::Auto
        {
            require(&ctx.principal, "policy:approve")?;
        }
        let org = &ctx.principal.org_id;
        if let Some(latest) = self.store.latest_intent(org, &intent.name).await?
            && !latest.deleted
            && latest.kind != intent.kind.name()
        {
            return Err(PolicyError::Conflict(format!(
                "intent {:?} is a {} intent; its kind cannot change (delete it first)",
                intent.name, latest.kind
            )));
        }
        let spec = intent.spec_json.to_string();
        let row = self
            .store
            .put_intent(
                org,
                &intent.name,
                intent.kind.name(),
                &intent.selector.to_json().to_string(),
                &spec,
                false,
                &ctx.principal.username,
            )
            .await
            .map_err(|e| {
                if lattice_core::db::Db::is_unique_violation(&e) {
                    PolicyError::Conflict(format!(
                        "intent {:?} was changed at the same time: try again",
                        intent.name
                    ))
                } else {
                    e.into()
                }
            })?;
        self.record(
            ctx,
            "intent.put",
            &row.name,
            Outcome::Success,
            json!({"version": row.version, "kind": row.kind,
                "spec_sha256": super::content_hash(&spec)}),
        )
        .await;
        Ok(row)
    }

    /// Delete an intent (`policy:write`): its history stays.
    pub async fn delete_intent(&self, ctx: &RequestContext, name: &str) -> Result<(), PolicyError> {
        require(&ctx.principal, "policy:write")?;
        let latest = self.live_intent(ctx, name).await?;
        let row = self
            .store
            .put_intent(
                &ctx.principal.org_id,
                name,
                &latest.kind,
                &latest.selector,
                &latest.spec,
                true,
                &ctx.principal.username,
            )
            .await?;
        self.record(
            ctx,
            "intent.delete",
            name,
            Outcome::Success,
            json!({"version": row.version}),
        )
        .await;
        Ok(())
    }

    async fn live_intent(
        &self,
        ctx: &RequestContext,
        name: &str,
    ) -> Result<IntentRow, PolicyError> {
        self.store
            .latest_intent(&ctx.principal.org_id, name)
            .await?
            .filter(|r| !r.deleted)
            .ok_or_else(|| PolicyError::NotFound(format!("intent {name:?}")))
    }

    /// The newest version of an intent (`policy:read`).
    pub async fn get_intent(
        &self,
        ctx: &RequestContext,
        name: &str,
    ) -> Result<IntentRow, PolicyError> {
        require(&ctx.principal, "policy:read")?;
        self.live_intent(ctx, name).await
    }

    /// Every live intent (`policy:read`).
    pub async fn list_intents(&self, ctx: &RequestContext) -> Result<Vec<IntentRow>, PolicyError> {
        require(&ctx.principal, "policy:read")?;
        Ok(self.store.list_intents(&ctx.principal.org_id).await?)
    }

    /// Every version of an intent, newest first (`policy:read`).
    pub async fn intent_history(
        &self,
        ctx: &RequestContext,
        name: &str,
    ) -> Result<Vec<IntentRow>, PolicyError> {
        require(&ctx.principal, "policy:read")?;
        let rows = self
            .store
            .intent_history(&ctx.principal.org_id, name)
            .await?;
        if rows.is_empty() {
            return Err(PolicyError::NotFound(format!("intent {name:?}")));
        }
        Ok(rows)
    }

    /// Render a plan of intent `name` for its nodes (or `only` those of them), each
    /// against what the node reports now (`policy:write`).
    pub async fn create_plan(
        &self,
        ctx: &RequestContext,
        name: &str,
        only: &[String],
    ) -> Result<Plan, PolicyError> {
        require(&ctx.principal, "policy:write")?;
        let row = self.live_intent(ctx, name).await?;
        let plan = self
            .render_plan(ctx, &ctx.principal.username, &row, only)
            .await?;
        self.store.insert_plan(&plan.plan, &plan.targets).await?;
        self.record(
            ctx,
            "plan.create",
            &plan.plan.id,
            Outcome::Success,
            json!({"hash": plan.plan.hash, "intent": plan.plan.intent, "intent_version": plan.plan.intent_version,
                "nodes": plan.targets.iter().map(|t| &t.node).collect::<Vec<_>>(),
                "drift": plan.targets.iter().filter(|t| t.drift).map(|t| &t.node).collect::<Vec<_>>()}),
        )
        .await;
        Ok(plan)
    }

    /// Render a plan of `row` in `ctx`'s org, by `author` (not stored yet).
    async fn render_plan(
        &self,
        ctx: &RequestContext,
        author: &str,
        row: &IntentRow,
        only: &[String],
    ) -> Result<Plan, PolicyError> {
        let name = &row.name;
        let doc = json!({"name": row.name, "kind": row.kind,
            "selector": serde_json::from_str::<Value>(&row.selector).unwrap_or(Value::Null),
            "spec": serde_json::from_str::<Value>(&row.spec).unwrap_or(Value::Null)});
        let intent = Intent::parse(&doc).map_err(|p| {
            PolicyError::Rejected(format!("the stored intent no longer validates: {p}"))
        })?;
        let mut nodes = self.nodes.select(ctx, &intent.selector).await?;
        if !only.is_empty() {
            for id in only {
                if !nodes.iter().any(|n| &n.id == id) {
                    return Err(PolicyError::Invalid(format!(
                        "targets: node {id:?} is not selected by intent {name:?}"
                    )));
                }
            }
            nodes.retain(|n| only.contains(&n.id));
        }
        if nodes.is_empty() {
            return Err(PolicyError::Invalid(format!(
                "intent {name:?} selects no node of this org"
            )));
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let org = ctx.principal.org_id.clone();
        let artifact_name = intent.artifact_name();
        // An agent update delivers the release's signed manifest for each node's
        // architecture.
        let mut manifests: BTreeMap<String, String> = BTreeMap::new();
        let mut targets = Vec::new();
        let mut rows = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let base = node
                .artifacts
                .get(&artifact_name)
                .cloned()
                .unwrap_or_else(Base::absent);
            let t = match &intent.spec {
                Spec::AgentUpdate(u) => {
                    if !manifests.contains_key(&node.arch) {
                        let m = self.releases.manifest(ctx, &u.version, &node.arch).await?;
                        manifests.insert(node.arch.clone(), m.render());
                    }
                    let artifact = manifests[&node.arch].clone();
                    Target {
                        node: node.id.clone(),
                        base_hash: base.hash.clone(),
                        diff: diff(&node.id, &base.content, &artifact),
                        artifact,
                    }
                }
                _ => target(&intent, &node.id, &base),
            };
            let drift = self.drifted(&org, &node.id, &artifact_name, &base).await?;
            rows.push(TargetRow {
                node: node.id.clone(),
                wave: i64::from(i >= intent.canary()),
                base_hash: t.base_hash.clone(),
                artifact: t.artifact.clone(),
                diff: t.diff.clone(),
                drift,
                task_id: String::new(),
                state: "waiting".into(),
                result: String::new(),
            });
            targets.push(t);
        }
        let now = now_ms();
        let plan = PlanRow {
            id: uuid::Uuid::now_v7().to_string(),
            org_id: org,
            intent: row.name.clone(),
            intent_version: row.version,
            kind: intent.kind.name().into(),
            hash: plan_hash(intent.kind, &targets),
            state: "pending".into(),
            author: author.to_owned(),
            created_at_ms: now,
            expires_at_ms: now + PLAN_TTL_MS,
            decided_by: String::new(),
            decided_at_ms: 0,
            reason: String::new(),
            artifact_name,
        };
        Ok(Plan {
            plan,
            targets: rows,
        })
    }

    /// Whether `base` differs from what Lattice last applied of `kind` on `node`
    /// (nothing applied yet: no drift unless something is there).
    async fn drifted(
        &self,
        org: &str,
        node: &str,
        artifact_name: &str,
        base: &Base,
    ) -> Result<bool, PolicyError> {
        Ok(
            match self.store.last_applied(org, node, artifact_name).await? {
                Some(artifact) => super::content_hash(&artifact) != base.hash,
                None => false,
            },
        )
    }

    /// A plan (`policy:read`), its rollout advanced first.
    pub async fn get_plan(&self, ctx: &RequestContext, id: &str) -> Result<Plan, PolicyError> {
        require(&ctx.principal, "policy:read")?;
        let plan = self.load(&ctx.principal.org_id, id).await?;
        if plan.plan.state == "applying" {
            self.advance(&plan).await?;
            return self.load(&ctx.principal.org_id, id).await;
        }
        Ok(plan)
    }

    /// The newest plans (`policy:read`).
    pub async fn list_plans(
        &self,
        ctx: &RequestContext,
        limit: i64,
    ) -> Result<Vec<PlanRow>, PolicyError> {
        require(&ctx.principal, "policy:read")?;
        Ok(self
            .store
            .list_plans(&ctx.principal.org_id, limit.clamp(1, 500))
            .await?)
    }

    async fn load(&self, org: &str, id: &str) -> Result<Plan, PolicyError> {
        let (plan, targets) = self
            .store
            .plan(org, id)
            .await?
            .ok_or_else(|| PolicyError::NotFound(format!("plan {id:?}")))?;
        Ok(Plan { plan, targets })
    }

    /// A pending plan, expiring it when its time is up.
    async fn pending(&self, ctx: &RequestContext, id: &str) -> Result<Plan, PolicyError> {
        let plan = self.load(&ctx.principal.org_id, id).await?;
        if plan.plan.state == "pending" && plan.plan.expires_at_ms <= now_ms() {
            self.store
                .transition(
                    &plan.plan.org_id,
                    id,
                    "pending",
                    "expired",
                    None,
                    "not approved in time",
                )
                .await?;
            return Err(PolicyError::Conflict(format!(
                "plan {id} expired unapproved: render a new one"
            )));
        }
        if plan.plan.state != "pending" {
            return Err(PolicyError::Conflict(format!(
                "plan {id} is {}, not pending",
                plan.plan.state
            )));
        }
        Ok(plan)
    }

    /// Approve the plan whose hash the approver reviewed (`policy:approve`, a Cedar
    /// `ApprovePlan` permit for every node, four eyes, a fresh second factor: TOTP
    /// within 5 minutes or `totp_code` now), then start its rollout.
    pub async fn approve(
        &self,
        ctx: &RequestContext,
        id: &str,
        hash: &str,
        totp_code: &str,
    ) -> Result<Plan, PolicyError> {
        require(&ctx.principal, "policy:approve")?;
        let plan = self.pending(ctx, id).await?;
        if hash != plan.plan.hash {
            self.record(
                ctx,
                "plan.approve",
                id,
                Outcome::Failure,
                json!({"hash": plan.plan.hash, "reviewed": hash, "why": "hash mismatch"}),
            )
            .await;
            return Err(PolicyError::Conflict(format!(
                "hash mismatch: you reviewed {hash}, plan {id} is {}: review the plan again",
                plan.plan.hash
            )));
        }
        for t in &plan.targets {
            let decision = self
                .policies
                .authorize(
                    ctx,
                    Subject::Caller,
                    Action::ApprovePlan,
                    Resource::Plan {
                        id: id.to_owned(),
                        kind: plan.plan.kind.clone(),
                        node: t.node.clone(),
                        author: plan.plan.author.clone(),
                    },
                )
                .await?;
            if !decision.allow {
                return Err(PolicyError::Forbidden(format!(
                    "policy denies ApprovePlan on Plan {id:?} (node {})",
                    t.node
                )));
            }
        }
        if self.four_eyes(ctx).await? && plan.plan.author == ctx.principal.username {
            self.record(
                ctx,
                "plan.approve",
                id,
                Outcome::Failure,
                json!({"hash": hash, "why": "four eyes"}),
            )
            .await;
            return Err(PolicyError::Forbidden(format!(
                "four eyes: {} rendered plan {id}, so someone else must approve it",
                plan.plan.author
            )));
        }
        self.check_fresh(ctx, &plan).await?;
        if !self.mfa.fresh(ctx, totp_code).await? {
            self.record(
                ctx,
                "plan.approve",
                id,
                Outcome::Failure,
                json!({"hash": hash, "why": "mfa required"}),
            )
            .await;
            return Err(PolicyError::MfaRequired(
                "approving needs TOTP completed within the last 5 minutes: send totp_code".into(),
            ));
        }
        self.decide(ctx, &plan, "applying", "").await?;
        self.record(
            ctx,
            "plan.approve",
            id,
            Outcome::Success,
            json!({"hash": hash, "author": plan.plan.author}),
        )
        .await;
        let plan = self.load(&plan.plan.org_id, id).await?;
        self.dispatch(&plan, 0).await?;
        self.load(&plan.plan.org_id, id).await
    }

    /// Move pending `plan` to `to` as decided by the caller; when someone else
    /// decided it at the same time, theirs stands and this is refused.
    async fn decide(
        &self,
        ctx: &RequestContext,
        plan: &Plan,
        to: &str,
        reason: &str,
    ) -> Result<(), PolicyError> {
        let (org, id) = (&plan.plan.org_id, &plan.plan.id);
        if self
            .store
            .transition(
                org,
                id,
                "pending",
                to,
                Some(&ctx.principal.username),
                reason,
            )
            .await?
        {
            Ok(())
        } else {
            Err(PolicyError::Conflict(format!(
                "plan {id} was decided by someone else at the same time"
            )))
        }
    }

    /// Whether four eyes applies in `ctx`'s org.
    async fn four_eyes(&self, ctx: &RequestContext) -> Result<bool, PolicyError> {
        Ok(
            match self.store.four_eyes(&ctx.principal.org_id).await?.as_str() {
                "on" => true,
                "off" => false,
                _ => self.admins.count(ctx).await? >= 2,
            },
        )
    }

    /// Refuse a plan whose nodes changed since it was rendered.
    async fn check_fresh(&self, ctx: &RequestContext, plan: &Plan) -> Result<(), PolicyError> {
        let intent = self
            .store
            .latest_intent(&plan.plan.org_id, &plan.plan.intent)
            .await?;
        let newer = intent
            .as_ref()
            .is_none_or(|i| i.deleted || i.version != plan.plan.intent_version);
        let mut changed = Vec::new();
        if newer {
            changed.push(format!(
                "intent {} is now {}",
                plan.plan.intent,
                intent.map_or("gone".to_owned(), |i| if i.deleted {
                    "deleted".to_owned()
                } else {
                    format!(
                        "at version {} (the plan renders {})",
                        i.version, plan.plan.intent_version
                    )
                })
            ));
        }
        let ids: BTreeMap<&str, &TargetRow> =
            plan.targets.iter().map(|t| (t.node.as_str(), t)).collect();
        for t in ids.values() {
            let now = self
                .nodes
                .select(ctx, &Selector::Node(t.node.clone()))
                .await?
                .into_iter()
                .next()
                .and_then(|n| n.artifacts.get(&plan.plan.artifact_name).cloned())
                .unwrap_or_else(Base::absent);
            if now.hash != t.base_hash {
                changed.push(format!(
                    "node {} now has {} (the plan was rendered against {})",
                    t.node, now.hash, t.base_hash
                ));
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        self.record(
            ctx,
            "plan.approve",
            &plan.plan.id,
            Outcome::Failure,
            json!({"hash": plan.plan.hash, "why": "stale", "changed": changed}),
        )
        .await;
        Err(PolicyError::Stale(format!(
            "plan {} is stale: {}; render a new plan",
            plan.plan.id,
            changed.join("; ")
        )))
    }

    /// Reject a pending plan (`policy:approve`).
    pub async fn reject(
        &self,
        ctx: &RequestContext,
        id: &str,
        reason: &str,
    ) -> Result<Plan, PolicyError> {
        require(&ctx.principal, "policy:approve")?;
        let plan = self.pending(ctx, id).await?;
        if reason.trim().is_empty() || reason.len() > 1024 {
            return Err(PolicyError::Invalid(
                "reason: say why, in at most 1 KiB".into(),
            ));
        }
        self.decide(ctx, &plan, "rejected", reason).await?;
        self.record(
            ctx,
            "plan.reject",
            id,
            Outcome::Success,
            json!({"hash": plan.plan.hash, "reason": reason}),
        )
        .await;
        self.load(&plan.plan.org_id, id).await
    }

    /// Cancel a pending plan: its author, or an approver.
    pub async fn cancel(&self, ctx: &RequestContext, id: &str) -> Result<Plan, PolicyError> {
        require(&ctx.principal, "policy:read")?;
        let plan = self.pending(ctx, id).await?;
        if plan.plan.author != ctx.principal.username && !ctx.principal.allows("policy:approve") {
            return Err(PolicyError::MissingScope("policy:approve".into()));
        }
        self.decide(ctx, &plan, "cancelled", "").await?;
        self.record(
            ctx,
            "plan.cancel",
            id,
            Outcome::Success,
            json!({"hash": plan.plan.hash}),
        )
        .await;
        self.load(&plan.plan.org_id, id).await
    }

    /// Queue the apply tasks of `wave`.
    async fn dispatch(&self, plan: &Plan, wave: i64) -> Result<(), PolicyError> {
        use futures::StreamExt as _;
        let kind = Kind::parse(&plan.plan.kind).unwrap_or(Kind::Firewall);
        let mut queue: Vec<futures::future::BoxFuture<'_, Result<(), PolicyError>>> = Vec::new();
        for t in plan
            .targets
            .iter()
            .filter(|t| t.wave == wave && t.task_id.is_empty())
        {
            queue.push(Box::pin(async move {
                let mut payload = json!({
                    "plan": plan.plan.id,
                    "hash": plan.plan.hash,
                    "base_hash": t.base_hash,
                    "artifact": t.artifact,
                });
                if let Some(zone) = plan.plan.artifact_name.strip_prefix("dns:") {
                    payload["zone"] = json!(zone);
                }
                let key = format!("plan:{}:{}", plan.plan.id, t.node);
                let task = self
                    .tasks
                    .enqueue(&plan.plan.org_id, &t.node, kind.task_kind(), payload, &key)
                    .await?;
                self.store
                    .set_target(&plan.plan.id, &t.node, &task, "queued", "")
                    .await?;
                Ok::<_, PolicyError>(())
            }));
        }
        // A wave of many nodes is queued a few at a time in parallel.
        let done: Vec<Result<(), PolicyError>> = futures::stream::iter(queue)
            .buffer_unordered(16)
            .collect()
            .await;
        done.into_iter().collect()
    }

    /// Fold the apply tasks' outcomes into the plan: record finished nodes, halt on
    /// the first failure, start the next wave when one is done, finish the plan.
    pub async fn advance(&self, plan: &Plan) -> Result<(), PolicyError> {
        let org = &plan.plan.org_id;
        let id = &plan.plan.id;
        use futures::StreamExt as _;
        // The outcomes of the queued tasks, asked a few at a time in parallel.
        let mut asks: Vec<
            futures::future::BoxFuture<'_, (String, Result<TaskOutcome, PolicyError>)>,
        > = Vec::new();
        for t in plan.targets.iter().filter(|t| t.state == "queued") {
            asks.push(Box::pin(async move {
                (t.node.clone(), self.tasks.outcome(org, &t.task_id).await)
            }));
        }
        let mut outcomes: BTreeMap<String, Result<TaskOutcome, PolicyError>> =
            futures::stream::iter(asks)
                .buffer_unordered(16)
                .collect()
                .await;
        let mut failed = None;
        let mut states: Vec<(i64, String)> = Vec::new();
        for t in &plan.targets {
            let mut state = t.state.clone();
            if t.state == "queued" {
                let outcome = outcomes
                    .remove(&t.node)
                    .unwrap_or(Ok(TaskOutcome::Pending))?;
                match outcome {
                    TaskOutcome::Pending => {}
                    TaskOutcome::Succeeded(result) => {
                        self.store
                            .set_target(id, &t.node, &t.task_id, "applied", &result)
                            .await?;
                        state = "applied".into();
                    }
                    TaskOutcome::Failed(error, result) => {
                        let result = if result.is_empty() {
                            json!({"error": error}).to_string()
                        } else {
                            result
                        };
                        self.store
                            .set_target(id, &t.node, &t.task_id, "failed", &result)
                            .await?;
                        failed.get_or_insert(format!("node {} failed: {error}", t.node));
                        state = "failed".into();
                    }
                }
            }
            states.push((t.wave, state));
        }
        if let Some(reason) = failed {
            for t in plan.targets.iter().filter(|t| t.state == "waiting") {
                self.store
                    .set_target(id, &t.node, "", "skipped", "")
                    .await?;
            }
            if self
                .store
                .transition(org, id, "applying", "halted", None, &reason)
                .await?
            {
                self.record_system(
                    org,
                    "plan.halt",
                    id,
                    Outcome::Failure,
                    json!({"hash": plan.plan.hash, "reason": reason}),
                )
                .await;
            }
            return Ok(());
        }
        if states.iter().any(|(_, s)| s == "queued") {
            return Ok(());
        }
        match states
            .iter()
            .filter(|(_, s)| s == "waiting")
            .map(|(w, _)| *w)
            .min()
        {
            Some(next) => {
                let plan = self.load(org, id).await?;
                self.dispatch(&plan, next).await?;
            }
            None => {
                if self
                    .store
                    .transition(org, id, "applying", "applied", None, "")
                    .await?
                {
                    self.record_system(
                        org,
                        "plan.applied",
                        id,
                        Outcome::Success,
                        json!({"hash": plan.plan.hash}),
                    )
                    .await;
                }
            }
        }
        Ok(())
    }

    async fn record_system(
        &self,
        org: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        detail: Value,
    ) {
        let ctx = RequestContext::internal(super::links::acting_in(org, &[]));
        self.record(&ctx, action, target, outcome, detail).await;
    }

    /// Advance every plan that is rolling out, and start the auto updates whose
    /// window is open (run every second or so, more often while plans roll out):
    /// how many plans are rolling out now.
    pub async fn drive(&self) -> Result<usize, PolicyError> {
        let applying = self.store.plans_in(&["applying"]).await?;
        for row in &applying {
            let plan = self.load(&row.org_id, &row.id).await?;
            self.advance(&plan).await?;
        }
        // One finished in this round still counts: one more quick round is cheap.
        Ok(applying.len() + self.auto_updates(now_ms()).await?)
    }

    /// For every live `agent.update` intent in `auto` mode whose window is open at
    /// `now`: when some node it selects does not run the version yet, render the
    /// plan and approve it as the policy (audited with the intent's version and who
    /// set it). Never while a plan of that version is pending or rolling out, and
    /// never again after one halted, was rejected or cancelled: a person looks first.
    /// How many rollouts it started.
    pub async fn auto_updates(&self, now: i64) -> Result<usize, PolicyError> {
        let mut started = 0;
        for (org, row) in self.store.live_intents_of_kind("agent.update").await? {
            let spec = serde_json::from_str::<Value>(&row.spec).unwrap_or(Value::Null);
            let Ok(u) = super::update::AgentUpdate::parse(&spec) else {
                continue;
            };
            if u.mode != Mode::Auto || !u.window.as_ref().is_some_and(|w| w.open_at(now)) {
                continue;
            }
            if let Some(last) = self
                .store
                .latest_plan_of(&org, &row.name, row.version)
                .await?
                && last.state != "applied"
                && last.state != "expired"
            {
                continue;
            }
            let ctx = RequestContext::internal(super::links::acting_in(&org, &[]));
            let plan = match self.render_plan(&ctx, AUTO, &row, &[]).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(org, intent = %row.name, error = %e, "auto update: no plan");
                    continue;
                }
            };
            if plan.targets.iter().all(|t| t.diff.is_empty()) {
                continue;
            }
            self.store.insert_plan(&plan.plan, &plan.targets).await?;
            let detail = json!({"hash": plan.plan.hash, "intent": row.name, "intent_version": row.version,
                "nodes": plan.targets.iter().map(|t| &t.node).collect::<Vec<_>>(), "auto": true});
            self.record_system(&org, "plan.create", &plan.plan.id, Outcome::Success, detail)
                .await;
            if !self
                .store
                .transition(&org, &plan.plan.id, "pending", "applying", Some(AUTO), "")
                .await?
            {
                continue;
            }
            self.record_system(
                &org,
                "plan.approve",
                &plan.plan.id,
                Outcome::Success,
                json!({"hash": plan.plan.hash, "auto": true, "policy": row.name,
                    "policy_version": row.version, "policy_set_by": row.created_by}),
            )
            .await;
            let plan = self.load(&org, &plan.plan.id).await?;
            self.dispatch(&plan, 0).await?;
            started += 1;
        }
        Ok(started)
    }

    /// Set the org's four-eyes rule (`policy:write`... and `*`: it weakens review).
    pub async fn set_four_eyes(
        &self,
        ctx: &RequestContext,
        value: &str,
    ) -> Result<(), PolicyError> {
        require(&ctx.principal, "*")?;
        if !["auto", "on", "off"].contains(&value) {
            return Err(PolicyError::Invalid("four_eyes: auto, on or off".into()));
        }
        self.store
            .set_four_eyes(&ctx.principal.org_id, value)
            .await?;
        self.record(
            ctx,
            "org.four_eyes",
            value,
            Outcome::Success,
            json!({"four_eyes": value}),
        )
        .await;
        Ok(())
    }
}
