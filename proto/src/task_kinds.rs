//! The task kinds the queue knows, shared by the tasks service (validation at
//! enqueue), the tunnel service (the server-side capability check at dispatch) and
//! the agent (the local check and the runner).

use serde_json::Value;

/// What a task kind needs and how it is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSpec {
    /// Dotted name, e.g. `exec`.
    pub name: &'static str,
    /// The privileged capability it needs on both sides (None: unprivileged).
    pub capability: Option<&'static str>,
    /// At most one running task of this kind per node.
    pub exclusive: bool,
    /// Attempts before the task is `dead` when not set at enqueue.
    pub default_max_attempts: i64,
    /// The shortest lease a claim of it holds, seconds (0: the queue's): an agent
    /// update outlives its agent's connection while the agent restarts.
    pub min_lease_s: u64,
}

/// Every kind this version ships.
pub const KINDS: &[KindSpec] = &[
    KindSpec {
        name: "facts.refresh",
        capability: None,
        exclusive: true,
        default_max_attempts: 3,
        min_lease_s: 0,
    },
    KindSpec {
        name: "exec",
        capability: Some("exec"),
        exclusive: true,
        default_max_attempts: 3,
        min_lease_s: 0,
    },
    // An approved plan's nftables table (queued by the policy service only).
    KindSpec {
        name: "firewall.apply",
        capability: Some("firewall"),
        exclusive: true,
        default_max_attempts: 1,
        min_lease_s: 0,
    },
    // An approved plan's zone file (queued by the policy service only).
    KindSpec {
        name: "dns.apply",
        capability: Some("dns"),
        exclusive: true,
        default_max_attempts: 1,
        min_lease_s: 0,
    },
    // An approved plan's reverse-proxy configuration (policy service only).
    KindSpec {
        name: "proxy.apply",
        capability: Some("proxy"),
        exclusive: true,
        default_max_attempts: 1,
        min_lease_s: 0,
    },
    // An approved plan's agent release (policy service only).
    KindSpec {
        name: "agent.update",
        capability: Some("update"),
        exclusive: true,
        default_max_attempts: 1,
        min_lease_s: 600,
    },
];

/// The kinds only an approved plan queues (through the policy service).
pub const APPLY_KINDS: &[&str] = &["firewall.apply", "dns.apply", "proxy.apply", "agent.update"];

/// Every capability a node can be granted.
pub const CAPABILITIES: &[&str] = &["exec", "firewall", "dns", "proxy", "update"];

/// The spec of `name`.
pub fn spec(name: &str) -> Option<&'static KindSpec> {
    KINDS.iter().find(|k| k.name == name)
}

/// Longest `exec` run the payload may ask for.
pub const MAX_EXEC_TIMEOUT_S: u64 = 3600;

/// A validated `exec` payload: `{"argv": ["prog", "arg", ...], "timeout_s": 60}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPayload {
    /// Program and arguments (no shell).
    pub argv: Vec<String>,
    /// Kill the program after this long.
    pub timeout_s: u64,
}

/// Check a payload for `kind`; the message names the offending field.
pub fn validate_payload(kind: &str, payload: &Value) -> Result<(), String> {
    match kind {
        "facts.refresh" => match payload {
            Value::Null => Ok(()),
            Value::Object(m) if m.is_empty() => Ok(()),
            _ => Err("payload: facts.refresh takes no payload ({})".into()),
        },
        "exec" => parse_exec(payload).map(|_| ()),
        "firewall.apply" | "dns.apply" | "proxy.apply" | "agent.update" => {
            let mut fields = vec!["plan", "hash", "base_hash", "artifact"];
            if kind == "dns.apply" {
                fields.push("zone");
            }
            let obj = payload
                .as_object()
                .ok_or_else(|| format!("payload: {kind} takes {{{}}}", fields.join(", ")))?;
            for field in &fields {
                if !obj.get(*field).is_some_and(Value::is_string) {
                    return Err(format!("payload.{field}: required, a string"));
                }
            }
            if let Some(k) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
                return Err(format!("payload.{k}: unknown field"));
            }
            Ok(())
        }
        other => Err(format!(
            "kind: unknown task kind {other:?} (known: {})",
            KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Parse an `exec` payload.
pub fn parse_exec(payload: &Value) -> Result<ExecPayload, String> {
    let obj = payload
        .as_object()
        .ok_or("payload: exec takes an object {\"argv\": [...]}")?;
    if let Some(k) = obj.keys().find(|k| *k != "argv" && *k != "timeout_s") {
        return Err(format!(
            "payload.{k}: unknown field (exec takes argv, timeout_s)"
        ));
    }
    let argv = obj
        .get("argv")
        .and_then(Value::as_array)
        .ok_or("payload.argv: required, a list of strings")?;
    if argv.is_empty() {
        return Err("payload.argv: must name a program".into());
    }
    if argv.len() > 256 {
        return Err("payload.argv: at most 256 arguments".into());
    }
    let mut out = Vec::with_capacity(argv.len());
    for (i, a) in argv.iter().enumerate() {
        let s = a
            .as_str()
            .ok_or_else(|| format!("payload.argv[{i}]: must be a string"))?;
        if s.contains('\0') {
            return Err(format!("payload.argv[{i}]: contains a NUL byte"));
        }
        out.push(s.to_owned());
    }
    if out[0].is_empty() {
        return Err("payload.argv[0]: must name a program".into());
    }
    let timeout_s = match obj.get("timeout_s") {
        None => 60,
        Some(v) => match v.as_u64() {
            Some(t) if (1..=MAX_EXEC_TIMEOUT_S).contains(&t) => t,
            _ => {
                return Err(format!(
                    "payload.timeout_s: must be 1..{MAX_EXEC_TIMEOUT_S} seconds"
                ));
            }
        },
    };
    Ok(ExecPayload {
        argv: out,
        timeout_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_are_checked_per_kind() {
        assert!(validate_payload("facts.refresh", &json!({})).is_ok());
        assert!(validate_payload("facts.refresh", &json!({"x": 1})).is_err());
        assert!(validate_payload("exec", &json!({"argv": ["uptime"]})).is_ok());
        let e = validate_payload("exec", &json!({"argv": []})).unwrap_err();
        assert!(e.contains("payload.argv"), "{e}");
        let e = validate_payload("exec", &json!({"argv": ["x"], "shell": true})).unwrap_err();
        assert!(e.contains("payload.shell"), "{e}");
        let e = validate_payload("exec", &json!({"argv": ["x"], "timeout_s": 0})).unwrap_err();
        assert!(e.contains("timeout_s"), "{e}");
        let e = validate_payload("nope", &json!({})).unwrap_err();
        assert!(e.starts_with("kind:"), "{e}");
    }
}
