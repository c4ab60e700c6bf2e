//! What the tasks service is asked for by operators, validated: the gRPC adapter
//! converts each such request message into one of these once, with `TryFrom`, and
//! the service works only with valid values.

use lattice_proto::task_kinds::{self, KindSpec};
use lattice_proto::tasks::v1 as pb;

use crate::error::TaskError;

/// Largest payload (JSON text), bytes.
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest idempotency key, bytes.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 200;

/// Refuse anything but a task or node id (1-64 of `A-Za-z0-9-`) in `field`.
pub(crate) fn check_id(field: &str, id: &str) -> Result<(), TaskError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(TaskError::Invalid(format!("{field}: {id:?} is not an id")));
    }
    Ok(())
}

/// A task to enqueue: a known kind with a payload it accepts, for a node id.
#[derive(Debug, Clone)]
pub struct EnqueueInput {
    /// The node to run on (whether it is the caller's is asked on enqueue).
    pub node_id: String,
    /// What kind of task.
    pub kind: &'static KindSpec,
    /// Its payload, as the kind accepts it (`{}` when none was given).
    pub payload: serde_json::Value,
    /// Makes a retried enqueue return the first task (trimmed; None when empty).
    pub idempotency_key: Option<String>,
    /// Attempts before the task is dead (the kind's default when 0 was asked).
    pub max_attempts: i64,
}

impl TryFrom<pb::EnqueueRequest> for EnqueueInput {
    type Error = TaskError;

    fn try_from(r: pb::EnqueueRequest) -> Result<Self, TaskError> {
        check_id("node", &r.node_id)?;
        let kind = task_kinds::spec(&r.kind).ok_or_else(|| {
            TaskError::Invalid(format!(
                "kind: unknown task kind {:?} (known: {})",
                r.kind,
                task_kinds::KINDS
                    .iter()
                    .map(|k| k.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let payload: serde_json::Value = if r.payload_json.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&r.payload_json)
                .map_err(|e| TaskError::Invalid(format!("payload: not JSON: {e}")))?
        };
        if r.payload_json.len() > MAX_PAYLOAD_BYTES {
            return Err(TaskError::Invalid("payload: at most 64 KiB".into()));
        }
        task_kinds::validate_payload(kind.name, &payload).map_err(TaskError::Invalid)?;
        let key = r.idempotency_key.trim();
        if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(TaskError::Invalid(
                "idempotency_key: at most 200 characters".into(),
            ));
        }
        let max_attempts = match r.max_attempts {
            0 => kind.default_max_attempts,
            n @ 1..=20 => n,
            _ => return Err(TaskError::Invalid("max_attempts: must be 1..20".into())),
        };
        Ok(Self {
            idempotency_key: (!key.is_empty()).then(|| key.to_owned()),
            node_id: r.node_id,
            kind,
            payload,
            max_attempts,
        })
    }
}

/// Which tasks of the caller's org to list, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only this node's ("" for every node).
    pub node_id: String,
    /// Only tasks in this state (None: any).
    pub state: Option<pb::TaskState>,
    /// Only tasks older than this one ("" to start from the newest).
    pub before: String,
    /// Most tasks returned (1 to 1000; 100 when 0 or less was asked).
    pub limit: i64,
}

impl TryFrom<pb::ListTasksRequest> for TaskFilter {
    type Error = TaskError;

    fn try_from(r: pb::ListTasksRequest) -> Result<Self, TaskError> {
        if !r.node_id.is_empty() {
            check_id("node", &r.node_id)?;
        }
        if !r.before.is_empty() {
            check_id("before", &r.before)?;
        }
        let state = match pb::TaskState::try_from(r.state) {
            Ok(pb::TaskState::Unspecified) => None,
            Ok(state) => Some(state),
            Err(_) => {
                return Err(TaskError::Invalid(format!(
                    "state: {} is not a task state",
                    r.state
                )));
            }
        };
        Ok(Self {
            node_id: r.node_id,
            state,
            before: r.before,
            limit: if r.limit <= 0 { 100 } else { r.limit.min(1000) },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> pb::EnqueueRequest {
        pb::EnqueueRequest {
            node_id: "node-1".into(),
            kind: "exec".into(),
            payload_json: r#"{"argv":["uptime"]}"#.into(),
            idempotency_key: "  k1 ".into(),
            max_attempts: 0,
        }
    }

    fn refusal(r: pb::EnqueueRequest) -> String {
        EnqueueInput::try_from(r).unwrap_err().to_string()
    }

    #[test]
    fn enqueue_requests_are_validated_and_defaulted() {
        let ok = EnqueueInput::try_from(exec()).unwrap();
        assert_eq!(ok.kind.name, "exec");
        assert_eq!(ok.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(ok.max_attempts, ok.kind.default_max_attempts);
        let facts = EnqueueInput::try_from(pb::EnqueueRequest {
            kind: "facts.refresh".into(),
            payload_json: " ".into(),
            idempotency_key: String::new(),
            ..exec()
        })
        .unwrap();
        assert_eq!(facts.payload, serde_json::json!({}));
        assert_eq!(facts.idempotency_key, None);
        for (bad, starts) in [
            (
                pb::EnqueueRequest {
                    node_id: "node 1".into(),
                    ..exec()
                },
                "node:",
            ),
            (
                pb::EnqueueRequest {
                    kind: "reboot".into(),
                    ..exec()
                },
                "kind:",
            ),
            (
                pb::EnqueueRequest {
                    payload_json: "{".into(),
                    ..exec()
                },
                "payload: not JSON",
            ),
            (
                pb::EnqueueRequest {
                    payload_json: r#"{"argv":[]}"#.into(),
                    ..exec()
                },
                "payload.argv",
            ),
            (
                pb::EnqueueRequest {
                    idempotency_key: "k".repeat(201),
                    ..exec()
                },
                "idempotency_key:",
            ),
            (
                pb::EnqueueRequest {
                    max_attempts: 21,
                    ..exec()
                },
                "max_attempts:",
            ),
        ] {
            let why = refusal(bad);
            assert!(why.contains(starts), "{why}");
        }
    }

    #[test]
    fn list_filters_are_validated_and_limited() {
        let all = TaskFilter::try_from(pb::ListTasksRequest::default()).unwrap();
        assert_eq!(all.limit, 100);
        let many = TaskFilter::try_from(pb::ListTasksRequest {
            limit: 5000,
            state: pb::TaskState::Queued.into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (many.limit, many.state),
            (1000, Some(pb::TaskState::Queued))
        );
        for bad in [
            pb::ListTasksRequest {
                state: 42,
                ..Default::default()
            },
            pb::ListTasksRequest {
                node_id: "a b".into(),
                ..Default::default()
            },
            pb::ListTasksRequest {
                before: "x;y".into(),
                ..Default::default()
            },
        ] {
            assert!(matches!(
                TaskFilter::try_from(bad),
                Err(TaskError::Invalid(_))
            ));
        }
    }
}
