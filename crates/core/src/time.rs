//! Wall-clock helpers. Every stored timestamp is unix milliseconds in a BIGINT.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch, as stored in every `*_at_ms` column.
pub fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock is after 1970");
    i64::try_from(since_epoch.as_millis())
        .expect("unix milliseconds fit in i64 until year 292 million")
}
