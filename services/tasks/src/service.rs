//! The task queue and audit log behind the gRPC adapter: scope checks, validation,
//! and the wake-ups that push work to agents as soon as it is queued.

use std::sync::Arc;

use lattice_core::audit::{Actor, AuditEvent, Outcome};
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::cache::Cache;
use lattice_core::time::now_ms;

use crate::error::TaskError;
use crate::input::{EnqueueInput, TaskFilter, check_id};
use crate::store::{AuditEntry, Completion, NewTask, Store, TaskRow, Verification};

/// The service that may claim tasks and record results for agents.
pub const TUNNEL_PRINCIPAL: &str = "service:tunnel";

/// The tasks service.
#[derive(Clone)]
pub struct Tasks {
    store: Store,
    cache: Cache,
    lease_ms: i64,
    /// Which org each node is in (the tunnel service).
    nodes: Arc<dyn crate::nodes::NodeDirectory>,
    /// Wakes the chainer when events are queued.
    pub(crate) chain_wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("lease_ms", &self.lease_ms)
            .finish_non_exhaustive()
    }
}

fn require(p: &Principal, scope: &str) -> Result<(), TaskError> {
    if p.allows(scope) {
        Ok(())
    } else {
        Err(TaskError::MissingScope(scope.into()))
    }
}

fn require_service(p: &Principal, who: &str) -> Result<(), TaskError> {
    if p.is_service() && p.sub == who {
        Ok(())
    } else {
        Err(TaskError::Forbidden(format!("only {who} may call this")))
    }
}

impl Tasks {
    /// A service over `store`; claims hold a lease of `lease_ms`.
    pub fn new(
        store: Store,
        cache: Cache,
        lease_ms: i64,
        nodes: Arc<dyn crate::nodes::NodeDirectory>,
    ) -> Self {
        Self {
            store,
            cache,
            lease_ms,
            nodes,
            chain_wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The store (background loops).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The lease a claim gets.
    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    /// Tell the replica holding `node`'s agent that it has work (`kind`: the one
    /// task queued, when that is what happened).
    pub async fn notify_runnable(&self, node: &str, kind: Option<&str>) {
        self.cache
            .announce(&lattice_proto::events::v1::TasksRunnable {
                node_id: node.to_owned(),
                kind: kind.map(str::to_owned),
            })
            .await;
    }

    /// Enqueue a task (`tasks:write`).
    pub async fn enqueue(
        &self,
        ctx: &RequestContext,
        input: EnqueueInput,
    ) -> Result<(TaskRow, bool), TaskError> {
        let p = &ctx.principal;
        if p.is_service_in_org() {
            // The policy service queues the applies of approved plans; nothing else
            // is queued by a service.
            require_service(p, "service:policy")?;
            if !lattice_proto::task_kinds::APPLY_KINDS.contains(&input.kind.name) {
                return Err(TaskError::Forbidden(format!(
                    "a service queues only reviewed applies, not {:?}",
                    input.kind.name
                )));
            }
        } else {
            require(p, "tasks:write")?;
            if lattice_proto::task_kinds::APPLY_KINDS.contains(&input.kind.name) {
                return Err(TaskError::Forbidden(format!(
                    "{} is queued only by an approved plan (POST /api/v1/plans/{{id}}/approve), never directly",
                    input.kind.name
                )));
            }
        }
        // The tunnel service owns nodes and the policy service decides who may run
        // what: both asked on every enqueue (nodes briefly cached).
        self.nodes
            .check_may_run(ctx, &input.node_id, input.kind.name)
            .await?;
        let EnqueueInput {
            node_id,
            kind,
            payload,
            idempotency_key,
            max_attempts,
        } = input;
        let audit = Actor::of(ctx).event(
            "task.create",
            "",
            Outcome::Success,
            &serde_json::json!({"node_id": node_id, "kind": kind.name}),
        );
        let new = NewTask {
            org_id: p.org_id.clone(),
            node_id,
            kind: kind.name.into(),
            payload: payload.to_string(),
            idempotency_key,
            exclusive: kind.exclusive,
            max_attempts,
            created_by: p.sub.clone(),
        };
        let (row, created) = self.store.enqueue(&new, &audit).await?;
        if created {
            self.chain_wake.notify_one();
            self.notify_runnable(&row.node_id, Some(&row.kind)).await;
        }
        Ok((row, created))
    }

    /// One task (`tasks:read`).
    pub async fn get(&self, p: &Principal, id: &str) -> Result<TaskRow, TaskError> {
        check_id("id", id)?;
        if p.is_service() {
            return self.store.get(None, id).await;
        }
        require(p, "tasks:read")?;
        self.store.get(Some(&p.org_id), id).await
    }

    /// Tasks of the caller's org, newest first (`tasks:read`).
    pub async fn list(
        &self,
        p: &Principal,
        filter: &TaskFilter,
    ) -> Result<Vec<TaskRow>, TaskError> {
        require(p, "tasks:read")?;
        self.store
            .list(
                &p.org_id,
                &filter.node_id,
                filter
                    .state
                    .map_or("", lattice_proto::tasks::v1::TaskState::name),
                &filter.before,
                filter.limit,
            )
            .await
    }

    /// Cancel (`tasks:write`).
    pub async fn cancel(&self, ctx: &RequestContext, id: &str) -> Result<TaskRow, TaskError> {
        let p = &ctx.principal;
        require(p, "tasks:write")?;
        check_id("id", id)?;
        let audit =
            Actor::of(ctx).event("task.cancel", id, Outcome::Success, &serde_json::json!({}));
        let row = self.store.cancel(&p.org_id, id, &audit).await?;
        self.chain_wake.notify_one();
        Ok(row)
    }

    /// Claim work for an agent (tunnel service only).
    pub async fn claim(
        &self,
        p: &Principal,
        node: &str,
        max: i64,
    ) -> Result<Vec<TaskRow>, TaskError> {
        require_service(p, TUNNEL_PRINCIPAL)?;
        check_id("node_id", node)?;
        let claimed = self
            .store
            .claim(node, max.clamp(1, 64), self.lease_ms)
            .await?;
        self.stretch(&claimed).await?;
        Ok(claimed)
    }

    /// Give claimed tasks of a kind with a longer minimum lease that lease.
    async fn stretch(&self, claimed: &[TaskRow]) -> Result<(), TaskError> {
        for t in claimed {
            if let Some(spec) = lattice_proto::task_kinds::spec(&t.kind)
                && spec.min_lease_s > 0
            {
                let min = i64::try_from(spec.min_lease_s * 1000).unwrap_or(i64::MAX);
                if min > self.lease_ms {
                    self.store
                        .stretch_lease(&t.id, t.epoch, now_ms() + min)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Extend leases (tunnel service only).
    pub async fn heartbeat(
        &self,
        p: &Principal,
        node: &str,
        leases: &[(String, i64)],
    ) -> Result<Vec<(String, i64)>, TaskError> {
        require_service(p, TUNNEL_PRINCIPAL)?;
        check_id("node_id", node)?;
        if leases.len() > 1024 {
            return Err(TaskError::Invalid("leases: at most 1024".into()));
        }
        self.store.heartbeat(node, leases, self.lease_ms).await
    }

    /// Record a result (tunnel service only); fenced by epoch.
    pub async fn complete(&self, p: &Principal, c: Completion) -> Result<TaskRow, TaskError> {
        Ok(self.complete_and_claim(p, c, 0).await?.0)
    }

    /// Record a result and claim up to `claim_max` (0: none) runnable tasks of the
    /// node in the same statement (tunnel service only); fenced by epoch. `None`:
    /// no claim was made (see [`Store::complete_and_claim`]).
    pub async fn complete_and_claim(
        &self,
        p: &Principal,
        c: Completion,
        claim_max: i64,
    ) -> Result<(TaskRow, Option<Vec<TaskRow>>), TaskError> {
        require_service(p, TUNNEL_PRINCIPAL)?;
        check_id("task_id", &c.task_id)?;
        check_id("node_id", &c.node_id)?;
        if c.result.len() > 1024 * 1024 {
            return Err(TaskError::Invalid("result_json: at most 1 MiB".into()));
        }
        if !c.result.is_empty() && serde_json::from_str::<serde_json::Value>(&c.result).is_err() {
            return Err(TaskError::Invalid("result_json: not JSON".into()));
        }
        if !(0..=64).contains(&claim_max) {
            return Err(TaskError::Invalid("claim_max: 0 to 64".into()));
        }
        let audit = AuditEvent {
            org_id: String::new(),
            actor: format!("node:{}", c.node_id),
            action: String::new(),
            target: c.task_id.clone(),
            outcome: if c.ok {
                Outcome::Success
            } else {
                Outcome::Failure
            },
            client_ip: String::new(),
            detail: serde_json::json!({"epoch": c.epoch, "error_code": c.error_code}).to_string(),
        };
        let claim = (claim_max > 0).then_some((claim_max, self.lease_ms));
        let result = self.store.complete_and_claim(&c, &audit, claim).await;
        if let Ok((_, Some(claimed))) = &result {
            self.stretch(claimed).await?;
        }
        self.chain_wake.notify_one();
        // No bus wake here: the tunnel replica that recorded the result holds the
        // agent and claims the next task itself.
        result
    }

    /// What the queue holds of an org (`orgs:admin`): its tasks.
    pub async fn org_usage(
        &self,
        p: &Principal,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, TaskError> {
        require(p, "orgs:admin")?;
        let n = self.store.org_task_count(org_id).await?;
        Ok((n > 0)
            .then(|| ("tasks".to_owned(), n))
            .into_iter()
            .collect())
    }

    /// Delete every task of an org (`orgs:admin`); the org's audit chain stays, with
    /// this deletion as its last entry.
    pub async fn purge_org(
        &self,
        ctx: &RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, TaskError> {
        require(&ctx.principal, "orgs:admin")?;
        let n = self.store.purge_org(org_id).await?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let event = Actor::in_org(ctx, org_id).event(
            "org.purge",
            org_id,
            Outcome::Success,
            &serde_json::json!({"removed": {"tasks": n}}),
        );
        self.store
            .append_audit(&[(uuid::Uuid::now_v7().to_string(), now_ms(), event)])
            .await?;
        Ok((n > 0)
            .then(|| ("tasks".to_owned(), n))
            .into_iter()
            .collect())
    }

    /// Queue audit events from another service (service principals only).
    pub async fn append_audit(
        &self,
        p: &Principal,
        events: Vec<(String, i64, AuditEvent)>,
    ) -> Result<u64, TaskError> {
        if !p.is_service() {
            return Err(TaskError::Forbidden(
                "only internal services append audit events".into(),
            ));
        }
        if events.len() > 1000 {
            return Err(TaskError::Invalid("events: at most 1000 per call".into()));
        }
        for (id, at, e) in &events {
            check_id("event_id", id)?;
            if *at <= 0 {
                return Err(TaskError::Invalid(format!("event {id}: at_ms must be set")));
            }
            if let Some(why) = e.refusal() {
                return Err(TaskError::Invalid(format!("event {id}: {why}")));
            }
        }
        let n = self.store.append_audit(&events).await?;
        // Chain now, so a reader right after an action sees it.
        self.store.chain_pending(10_000).await?;
        Ok(n)
    }

    /// Read the chain (`audit:read`): the caller's org (a `*` principal also sees
    /// events that belong to no org, such as failed logins of unknown users).
    pub async fn list_audit(
        &self,
        p: &Principal,
        after: i64,
        limit: i64,
        target: &str,
    ) -> Result<Vec<AuditEntry>, TaskError> {
        let (limit, everything) = self.audit_reader(p, limit).await?;
        self.store
            .list_audit(Some(&p.org_id), everything, after.max(0), limit, target)
            .await
    }

    /// A read of the chain: `audit:read`, whatever is queued chained first (so the
    /// reader sees every event so far), the page size, and whether the reader (a `*`
    /// principal) also sees events of no org.
    async fn audit_reader(&self, p: &Principal, limit: i64) -> Result<(i64, bool), TaskError> {
        require(p, "audit:read")?;
        self.store.chain_pending(10_000).await?;
        let limit = if limit <= 0 { 100 } else { limit.min(1000) };
        Ok((limit, p.scopes.iter().any(|s| s == "*")))
    }

    /// The newest `limit` entries of the caller's org, newest first (`audit:read`).
    pub async fn recent_audit(
        &self,
        p: &Principal,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, TaskError> {
        let (limit, everything) = self.audit_reader(p, limit).await?;
        self.store
            .recent_audit(Some(&p.org_id), everything, limit)
            .await
    }

    /// Walk the chain (`audit:read`).
    pub async fn verify_audit(&self, p: &Principal) -> Result<Verification, TaskError> {
        require(p, "audit:read")?;
        self.store.chain_pending(10_000).await?;
        self.store.verify_audit().await
    }
}
