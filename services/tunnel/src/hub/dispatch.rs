//! Task dispatch: what wakes a session's dispatcher, claims, tasks pushed to the
//! agent, results fenced by epoch (the next claim rides on them), and leases kept
//! current by heartbeats.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lattice_proto::agent::v1 as agent;
use lattice_proto::task_kinds;
use lattice_proto::tasks::v1 as tpb;

use super::{Hub, Session};

/// Tasks claimed per dispatch round.
const CLAIM_BATCH: i64 = 16;
/// How long a session trusts the node's capabilities it read (a change is also
/// announced on the bus, which drops them at once).
const CAPS_TTL: Duration = Duration::from_secs(30);

impl Session {
    /// Wake the dispatcher to claim whatever is runnable.
    pub(super) fn wake_any(&self) {
        self.wanted.lock().expect("wanted lock").any = true;
        self.wake.notify_one();
    }

    /// Wake the dispatcher for a queued task of `kind`, unless a claim could not
    /// start it now.
    pub(super) fn wake_for(&self, kind: &str) {
        // Decided under the `wanted` lock: a result removes its task from
        // `inflight` before it takes `blocked` under this lock, so a kind is either
        // seen startable here or found blocked there, never lost in between.
        let mut w = self.wanted.lock().expect("wanted lock");
        let start = self.could_start(kind);
        let list = if start { &mut w.kinds } else { &mut w.blocked };
        if !list.iter().any(|k| k == kind) {
            list.push(kind.to_owned());
        }
        drop(w);
        if start {
            self.wake.notify_one();
        }
    }

    /// Whether the wakes since the last claim call for a claim now. A task queued
    /// while the previous claim ran wakes it again; if that claim started a task of
    /// the same exclusive kind, another claim would find nothing.
    fn take_wanted(&self) -> bool {
        let mut w = self.wanted.lock().expect("wanted lock");
        let any = std::mem::take(&mut w.any);
        let kinds = std::mem::take(&mut w.kinds);
        drop(w);
        any || kinds.iter().any(|k| self.could_start(k))
    }

    /// Forget the blocked kinds, returning whether one of them could start now. A
    /// result's claim sees every task queued before it started (a wake follows its
    /// task's commit), so the kinds blocked until then need no other claim.
    fn take_blocked(&self) -> bool {
        let blocked = std::mem::take(&mut self.wanted.lock().expect("wanted lock").blocked);
        blocked.iter().any(|k| self.could_start(k))
    }

    /// Whether a claim could start a task of `kind` now: not while this agent runs
    /// one of an exclusive kind (its result claims the next one anyway).
    fn could_start(&self, kind: &str) -> bool {
        let exclusive = task_kinds::spec(kind).is_none_or(|k| k.exclusive);
        !exclusive || !self.inflight().values().any(|k| k == kind)
    }
}

impl Hub {
    pub(super) async fn extend_leases(&self, s: &Session, running: &[agent::RunningTask]) {
        let Some(tasks) = &self.tasks else { return };
        let req = tpb::HeartbeatRequest {
            node_id: s.node_id.clone(),
            leases: running
                .iter()
                .map(|r| tpb::Lease {
                    task_id: r.task_id.clone(),
                    epoch: r.epoch,
                })
                .collect(),
        };
        match tasks.clone().heartbeat(self.treq(req)).await {
            Ok(resp) => {
                for stale in resp.into_inner().stale {
                    s.inflight().remove(&stale.task_id);
                    s.send(agent::server_message::Msg::Cancel(agent::CancelTask {
                        task_id: stale.task_id,
                        epoch: stale.epoch,
                    }));
                }
            }
            Err(status) => tracing::warn!(node = %s.node_id, %status, "lease heartbeat failed"),
        }
    }

    pub(super) async fn complete(&self, s: &Session, r: agent::TaskResult, claim_next: bool) {
        let Some(tasks) = &self.tasks else { return };
        let req = tpb::CompleteAndClaimRequest {
            result: Some(tpb::CompleteRequest {
                task_id: r.task_id.clone(),
                epoch: r.epoch,
                node_id: s.node_id.clone(),
                ok: r.ok,
                result_json: r.result_json,
                error_code: r.error_code,
                error: r.error,
            }),
            claim_max: if claim_next { CLAIM_BATCH } else { 0 },
        };
        // Wakes from here on may be for tasks the claim below cannot see.
        s.take_blocked();
        let mut answer = Box::pin(tasks.clone().complete_and_claim(self.treq(req.clone())))
            .await
            .map(|resp| {
                let r = resp.into_inner();
                r.claim_made.then_some(r.claimed)
            });
        if matches!(&answer, Err(st) if st.code() == tonic::Code::Unimplemented) {
            // A tasks service of an earlier release (during a rolling upgrade).
            let result = req.result.unwrap_or_default();
            answer = Box::pin(tasks.clone().complete(self.treq(result)))
                .await
                .map(|_| None);
        }
        let (accepted, reason, claimed) = match answer {
            Ok(claimed) => (true, String::new(), claimed),
            // Fenced or gone: tell the agent to drop it.
            Err(st)
                if matches!(
                    st.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::NotFound
                ) =>
            {
                (false, st.message().to_owned(), None)
            }
            // The queue is unreachable: no ack, the agent sends it again later.
            Err(st) => {
                tracing::warn!(node = %s.node_id, status = %st, "could not record a task result; the agent will resend it");
                return;
            }
        };
        s.inflight().remove(&r.task_id);
        s.send(agent::server_message::Msg::Ack(agent::ResultAck {
            task_id: r.task_id,
            epoch: r.epoch,
            accepted,
            reason,
        }));
        // The next tasks came with the result. The dispatcher looks again when no
        // claim was made, after a full batch, or when a task of a kind that was
        // running here was queued after the claim started and could start now.
        let again = match claimed {
            None => true,
            Some(c) => {
                let full = self.deliver(s, c).await;
                // After delivery: a blocked kind the claim did not start again.
                s.take_blocked() || full
            }
        };
        if again {
            s.wake_any();
        }
    }

    /// The node's server-side capabilities: cached in the session for [`CAPS_TTL`],
    /// dropped at once when the node changes. Unreadable counts as none.
    async fn node_caps(&self, s: &Session) -> Arc<Vec<String>> {
        let generation = {
            let c = s.caps.lock().expect("caps lock");
            if let Some((at, caps)) = &c.value
                && at.elapsed() < CAPS_TTL
            {
                return caps.clone();
            }
            c.generation
        };
        match self.nodes.store().node(None, &s.node_id).await {
            Ok(n) => {
                let caps = Arc::new(n.capabilities);
                let mut c = s.caps.lock().expect("caps lock");
                if c.generation == generation {
                    c.value = Some((Instant::now(), caps.clone()));
                }
                caps
            }
            Err(_) => Arc::new(Vec::new()),
        }
    }

    pub(super) async fn dispatch_loop(self: Arc<Self>, s: Arc<Session>) {
        let Some(tasks) = self.tasks.clone() else {
            return;
        };
        loop {
            // Pushed by the bus; the poll covers pushes that cannot arrive (see
            // `Settings::task_poll_ms`), spread so sessions do not poll together.
            let every = self.nodes.settings.task_poll_ms.max(1_000) as u64;
            let poll = Duration::from_millis(every + rand::random_range(0..=every / 2));
            tokio::select! {
                _ = s.close.cancelled() => return,
                _ = s.wake.notified() => {
                    if !s.take_wanted() {
                        continue;
                    }
                }
                _ = tokio::time::sleep(poll) => {}
            }
            // The calls are boxed: this loop lives as long as the agent's connection,
            // and an idle one should not hold the space of a call in flight.
            let claimed = match Box::pin(tasks.clone().claim(self.treq(tpb::ClaimRequest {
                node_id: s.node_id.clone(),
                max: CLAIM_BATCH,
            })))
            .await
            {
                Ok(r) => r.into_inner().tasks,
                Err(status) => {
                    tracing::warn!(node = %s.node_id, %status, "claim failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    s.wake_any();
                    continue;
                }
            };
            if Box::pin(self.deliver(&s, claimed)).await {
                s.wake_any();
            }
        }
    }

    /// Push claimed tasks to the agent (a task needing a capability the node lacks
    /// on the server side is failed here instead). Returns whether the claim was a
    /// full batch, so there may be more.
    async fn deliver(&self, s: &Session, claimed: Vec<tpb::ClaimedTask>) -> bool {
        let full = claimed.len() as i64 == CLAIM_BATCH;
        for t in claimed {
            let needs = task_kinds::spec(&t.kind).and_then(|k| k.capability);
            if let Some(cap) = needs
                && !Box::pin(self.node_caps(s)).await.iter().any(|x| x == cap)
            {
                let error = format!(
                    "server refused: capability {cap:?} is not enabled for node {} (enable it with PATCH /api/v1/nodes/{} {{\"capabilities\":[\"{cap}\"]}})",
                    s.node_id, s.node_id
                );
                let r = agent::TaskResult {
                    task_id: t.id,
                    epoch: t.epoch,
                    ok: false,
                    result_json: serde_json::json!({"refused_by": "server", "capability": cap})
                        .to_string(),
                    error_code: "capability_denied".into(),
                    error,
                };
                Box::pin(self.complete(s, r, false)).await;
                continue;
            }
            s.inflight().insert(t.id.clone(), t.kind.clone());
            s.send(agent::server_message::Msg::Task(agent::TaskAssignment {
                task_id: t.id,
                epoch: t.epoch,
                kind: t.kind,
                payload_json: t.payload_json,
            }));
        }
        full
    }
}
