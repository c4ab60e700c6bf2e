//! Uploading a raw body with a progress display on stderr.
//!
//! The body is streamed in chunks; as each chunk is handed to the connection the
//! line `uploading 1.2 MiB / 3.4 MiB (35%)` is redrawn with `\r` when stderr is a
//! terminal. Otherwise nothing is printed until the upload is done.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};

use crate::client::{Api, Reply};

/// Bytes per streamed chunk.
const CHUNK: usize = 64 * 1024;

/// `1.5 KiB`, `3.4 MiB`, ...: sizes for people.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Precision loss is irrelevant for a display.
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Whole percent of `total` that `sent` is (100 for an empty body).
pub fn percent(sent: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    let pct = u128::from(sent.min(total)) * 100 / u128::from(total);
    u64::try_from(pct).unwrap_or(100)
}

/// The progress line (without the leading `\r`).
pub fn progress_line(sent: u64, total: u64) -> String {
    format!(
        "uploading {} / {} ({}%)",
        human_bytes(sent),
        human_bytes(total),
        percent(sent, total)
    )
}

/// How long an upload of `bytes` may take: a minute plus a second per 128 KiB.
fn upload_timeout(bytes: u64) -> Duration {
    Duration::from_secs(60u64.saturating_add(bytes / (128 * 1024)))
}

/// Send `data` as the body of `method path` with this Content-Type, showing progress.
pub async fn upload(
    api: &Api,
    method: Method,
    path: &str,
    content_type: &str,
    data: &[u8],
) -> anyhow::Result<Reply> {
    let total = u64::try_from(data.len()).unwrap_or(u64::MAX);
    let tty = std::io::stderr().is_terminal();
    let chunks: Vec<Vec<u8>> = data.chunks(CHUNK).map(<[u8]>::to_vec).collect();
    let mut sent = 0u64;
    let mut shown = None;
    let mut width = 0;
    let stream = futures::stream::iter(chunks.into_iter().map(move |chunk| {
        sent = sent.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        let pct = percent(sent, total);
        if tty && shown != Some(pct) {
            shown = Some(pct);
            // Pad to the widest line so far: a shorter one must cover it.
            let line = progress_line(sent, total);
            width = width.max(line.len());
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{line:<width$}");
            let _ = err.flush();
        }
        Ok::<_, std::io::Error>(chunk)
    }));
    let body = reqwest::Body::wrap_stream(stream);
    let content_type = content_type.to_owned();
    let result = api
        .send_with(method, path, move |req| {
            req.header(CONTENT_TYPE, content_type)
                .header(CONTENT_LENGTH, total)
                .timeout(upload_timeout(total))
                .body(body)
        })
        .await;
    if tty {
        eprintln!();
    }
    if result.is_ok() {
        eprintln!("uploaded {}", human_bytes(total));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 400 * 1024), "3.4 MiB");
        assert_eq!(human_bytes(5 << 40), "5.0 TiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn progress_is_a_percentage() {
        assert_eq!(percent(0, 200), 0);
        assert_eq!(percent(99, 200), 49);
        assert_eq!(percent(200, 200), 100);
        assert_eq!(percent(300, 200), 100);
        assert_eq!(percent(0, 0), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
        assert_eq!(
            progress_line(1536, 4096),
            "uploading 1.5 KiB / 4.0 KiB (37%)"
        );
    }

    #[test]
    fn big_uploads_get_more_time() {
        assert_eq!(upload_timeout(0), Duration::from_secs(60));
        assert_eq!(upload_timeout(128 * 1024 * 600), Duration::from_secs(660));
    }
}
