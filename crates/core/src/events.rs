//! Names shared by services and the gateway for cache keys and bus channels, so a
//! writer and the readers it must invalidate agree on them in one place.

/// Bus channel: a host binding (or the deployment behind it) changed; the message
/// is the host, or `*` for "drop everything".
pub const STORAGE_HOSTS_CHANNEL: &str = "storage.hosts";
/// Bus channel: a storage token was revoked; the message is its id.
pub const STORAGE_TOKENS_CHANNEL: &str = "storage.tokens";

/// Shared-cache key of a KV entry as served through a host binding.
pub fn kv_cache_key(bucket_id: &str, key: &str) -> String {
    format!("kv:{bucket_id}:{key}")
}

/// Shared-cache key of a host's binding resolution.
pub fn host_cache_key(host: &str) -> String {
    format!("host:{host}")
}

/// Bus channel: a node has runnable tasks; the message is the node id, followed by
/// a space and the task's kind when one task was queued. The tunnel replica holding
/// that node's agent claims and pushes them.
pub const TASKS_RUNNABLE_CHANNEL: &str = "tasks.runnable";

/// Bus channel: a node's settings (its capabilities) changed; the message is the
/// node id. Tunnel replicas drop what they cached of it.
pub const NODES_CHANGED_CHANNEL: &str = "nodes.changed";

/// Bus channel: an operator asked a connected node's agent to reconnect; JSON
/// `{"node", "url", "reason"}`, acted on by the tunnel replica holding the stream.
pub const NODES_RECONNECT_CHANNEL: &str = "nodes.reconnect";
