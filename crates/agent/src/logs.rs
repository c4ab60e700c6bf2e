//! Log followers: journald (through `journalctl`) and plain files, feeding
//! [`LogLine`]s into a bounded channel for shipping in batches.
//!
//! Followers never block on a full channel: the line is dropped and counted
//! (see [`dropped_lines`]). A follower whose process or file fails restarts
//! after a 5 s pause until the shutdown token is cancelled; it stops for good
//! once the receiving side of the channel is gone.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest message kept, in bytes; longer ones are cut on a char boundary.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// A file "line" without a newline is flushed once it grows this large.
const MAX_PENDING_BYTES: usize = 1024 * 1024;
/// Read buffer for file followers.
const READ_CHUNK: usize = 64 * 1024;
/// Pause before restarting a failed follower.
const RESTART_PAUSE: Duration = Duration::from_secs(5);
/// How often file followers look for new data.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// syslog "informational".
const DEFAULT_PRIORITY: u32 = 6;

/// Lines dropped because the channel was full, over the process lifetime.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// One log line.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// When it was logged (journald) or read (files), Unix milliseconds.
    pub at_ms: i64,
    /// Unit, syslog identifier or file path.
    pub source: String,
    /// The text, at most 16 KiB.
    pub message: String,
    /// syslog priority, 0 (emerg) to 7 (debug).
    pub priority: u32,
}

/// Where to read logs from.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LogSource {
    /// `journalctl -o json -f -n 0 [-u UNIT ...]`
    Journald {
        /// Units to follow; empty means the whole journal.
        #[serde(default)]
        units: Vec<String>,
    },
    /// Follow a file from its end (like `tail -F`: survives rotation/truncation by reopening when the inode changes or the size shrinks).
    File {
        /// Path of the file.
        path: PathBuf,
    },
}

/// Number of lines dropped so far because the channel was full.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Start following every source; lines go to `tx` (bounded channel; when it is full, drop the line and count it, never block the reader forever). Returns the spawned task handles. Each follower restarts with a 5 s pause if its process/file fails, until `shutdown` is cancelled.
///
/// Must be called from within a Tokio runtime.
pub fn spawn_followers(
    sources: &[LogSource],
    tx: Sender<LogLine>,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    sources
        .iter()
        .map(|source| {
            let tx = tx.clone();
            let shutdown = shutdown.clone();
            match source {
                LogSource::Journald { units } => {
                    tokio::spawn(run_journald(units.clone(), tx, shutdown))
                }
                LogSource::File { path } => tokio::spawn(run_file(path.clone(), tx, shutdown)),
            }
        })
        .collect()
}

/// Parses one line of `journalctl -o json` output.
///
/// Returns `None` for invalid JSON or an entry without a usable `MESSAGE`.
/// Missing timestamp means "now", missing unit falls back to
/// `SYSLOG_IDENTIFIER` then `"journal"`, missing priority means 6.
pub fn parse_journal_json(line: &str) -> Option<LogLine> {
    let value: Value = serde_json::from_str(line).ok()?;
    let entry = value.as_object()?;
    let message = entry.get("MESSAGE").and_then(field_text)?;
    let at_ms = entry
        .get("__REALTIME_TIMESTAMP")
        .and_then(field_text)
        .and_then(|micros| micros.trim().parse::<i64>().ok())
        .map_or_else(now_ms, |micros| micros / 1000);
    let source = ["_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER"]
        .into_iter()
        .filter_map(|key| entry.get(key).and_then(field_text))
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "journal".to_owned());
    let priority = entry
        .get("PRIORITY")
        .and_then(field_text)
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(DEFAULT_PRIORITY);
    Some(LogLine {
        at_ms,
        source,
        message: truncate_message(message),
        priority,
    })
}

/// Text of a journal JSON field: a string, an array of byte values (how
/// journald encodes non-UTF-8 data, decoded lossily), or for a field that
/// occurs several times an array of those, of which the first is used.
fn field_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(Value::as_u64)
                .filter_map(|b| u8::try_from(b).ok())
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        Value::Array(items) => items.first().and_then(field_text),
        _ => None,
    }
}

/// Cuts a message to [`MAX_MESSAGE_BYTES`] on a char boundary.
fn truncate_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// Unix time in milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Hands a line to the channel without waiting. Returns `false` once the
/// receiver is gone; a full channel drops (and counts) the line.
fn deliver(tx: &Sender<LogLine>, line: LogLine) -> bool {
    match tx.try_send(line) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            let dropped = DROPPED.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "log channel full; dropping lines");
            }
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

/// Sleeps [`RESTART_PAUSE`]; `false` if shutdown came first.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(RESTART_PAUSE) => true,
    }
}

// ---------------------------------------------------------------------------
// journald
// ---------------------------------------------------------------------------

/// Runs `journalctl` until shutdown, restarting it when it fails.
async fn run_journald(units: Vec<String>, tx: Sender<LogLine>, shutdown: CancellationToken) {
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match follow_journald(&units, &tx, &shutdown).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(
                    ?units,
                    "journald follower failed, restarting in 5 s: {err:#}"
                );
            }
        }
        if !pause(&shutdown).await {
            return;
        }
    }
}

/// One `journalctl` run. `Ok` means stop for good (shutdown or receiver
/// gone); an error means restart.
async fn follow_journald(
    units: &[String],
    tx: &Sender<LogLine>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut cmd = Command::new("journalctl");
    // `--all` stops journalctl from replacing fields over 4096 bytes with
    // null; `--output-fields` keeps the JSON to what we use (the `__*`
    // timestamp fields are always included).
    cmd.args([
        "-o",
        "json",
        "-f",
        "-n",
        "0",
        "--all",
        "--output-fields=MESSAGE,PRIORITY,_SYSTEMD_UNIT,SYSLOG_IDENTIFIER",
    ]);
    for unit in units {
        cmd.arg("-u").arg(unit);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("spawning journalctl")?;
    let stdout = child
        .stdout
        .take()
        .context("journalctl stdout was not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        // `next_line` is cancellation safe.
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = lines.next_line() => next.context("reading journalctl output")?,
        };
        let Some(raw) = next else {
            let status = child.wait().await.context("waiting for journalctl")?;
            bail!("journalctl exited ({status})");
        };
        if let Some(line) = parse_journal_json(&raw)
            && !deliver(tx, line)
        {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// Where to start reading when a followed file is (re)opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// First start: skip what is already there.
    End,
    /// The file appeared later or was replaced: read all of it.
    Start,
    /// Continue where we were if it is still the same file and not shorter.
    At {
        /// Inode of the file we were reading.
        ino: u64,
        /// Bytes consumed from it.
        pos: u64,
    },
}

/// Whether a follower should keep going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Keep following.
    Continue,
    /// Shutdown or receiver gone.
    Stop,
}

/// Follows a file until shutdown, reopening it after failures.
async fn run_file(path: PathBuf, tx: Sender<LogLine>, shutdown: CancellationToken) {
    let source = path.display().to_string();
    let mut resume = Resume::End;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match follow_file(&path, &source, &mut resume, &tx, &shutdown).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(path = %source, "file follower failed, retrying in 5 s: {err:#}");
            }
        }
        // A file missing at first start is read from its beginning once it
        // shows up, like `tail -F`.
        if resume == Resume::End {
            resume = Resume::Start;
        }
        if !pause(&shutdown).await {
            return;
        }
    }
}

/// Follows `path` across rotations. `Ok` means stop for good; an error
/// means retry later from `resume`.
async fn follow_file(
    path: &Path,
    source: &str,
    resume: &mut Resume,
    tx: &Sender<LogLine>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let mut file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let meta = file
            .metadata()
            .await
            .with_context(|| format!("stat {}", path.display()))?;
        let ino = meta.ino();
        let mut pos = match *resume {
            Resume::End => meta.len(),
            Resume::At { ino: prev, pos } if prev == ino && pos <= meta.len() => pos,
            Resume::Start | Resume::At { .. } => 0,
        };
        file.seek(SeekFrom::Start(pos))
            .await
            .with_context(|| format!("seeking {}", path.display()))?;
        pending.clear();
        *resume = Resume::At { ino, pos };

        loop {
            let flow = read_new(
                &mut file,
                &mut buf,
                &mut pending,
                &mut pos,
                source,
                tx,
                shutdown,
            )
            .await
            .with_context(|| format!("reading {}", path.display()))?;
            *resume = Resume::At { ino, pos };
            if flow == Flow::Stop {
                return Ok(());
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            match tokio::fs::metadata(path).await {
                Ok(current) if current.ino() != ino => {
                    // Replaced (rename rotation): finish the old file, then
                    // switch to the new one from its start.
                    let flow = read_new(
                        &mut file,
                        &mut buf,
                        &mut pending,
                        &mut pos,
                        source,
                        tx,
                        shutdown,
                    )
                    .await
                    .with_context(|| format!("reading {}", path.display()))?;
                    if flow == Flow::Stop || !flush_pending(&mut pending, source, tx) {
                        return Ok(());
                    }
                    *resume = Resume::Start;
                    break;
                }
                Ok(current) if current.len() < pos => {
                    // Truncated in place (copytruncate): start over.
                    file.seek(SeekFrom::Start(0))
                        .await
                        .with_context(|| format!("seeking {}", path.display()))?;
                    pos = 0;
                    pending.clear();
                    *resume = Resume::At { ino, pos };
                }
                Ok(_) => {}
                // Removed: keep the old handle until a new file appears.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("stat {}", path.display()));
                }
            }
        }
    }
}

/// Reads everything currently available, emitting complete lines as it goes.
async fn read_new(
    file: &mut tokio::fs::File,
    buf: &mut [u8],
    pending: &mut Vec<u8>,
    pos: &mut u64,
    source: &str,
    tx: &Sender<LogLine>,
    shutdown: &CancellationToken,
) -> std::io::Result<Flow> {
    loop {
        if shutdown.is_cancelled() {
            return Ok(Flow::Stop);
        }
        let read = file.read(buf).await?;
        if read == 0 {
            return Ok(Flow::Continue);
        }
        *pos += read as u64;
        pending.extend_from_slice(&buf[..read]);
        for message in take_complete_lines(pending) {
            if !deliver(tx, file_line(source, message)) {
                return Ok(Flow::Stop);
            }
        }
        if pending.len() > MAX_PENDING_BYTES && !flush_pending(pending, source, tx) {
            return Ok(Flow::Stop);
        }
    }
}

/// Emits whatever is buffered as one line. `false` once the receiver is gone.
fn flush_pending(pending: &mut Vec<u8>, source: &str, tx: &Sender<LogLine>) -> bool {
    match line_text(&std::mem::take(pending)) {
        Some(message) => deliver(tx, file_line(source, message)),
        None => true,
    }
}

/// A line read from a file.
fn file_line(source: &str, message: String) -> LogLine {
    LogLine {
        at_ms: now_ms(),
        source: source.to_owned(),
        message,
        priority: DEFAULT_PRIORITY,
    }
}

/// Removes the complete (newline-terminated) lines from `pending` and
/// returns their text, leaving any trailing partial line in place. Blank
/// lines are skipped.
fn take_complete_lines(pending: &mut Vec<u8>) -> Vec<String> {
    let Some(last_newline) = pending.iter().rposition(|&b| b == b'\n') else {
        return Vec::new();
    };
    let rest = pending.split_off(last_newline + 1);
    let complete = std::mem::replace(pending, rest);
    complete
        .split(|&b| b == b'\n')
        .filter_map(line_text)
        .collect()
}

/// Text of one raw line: trailing `\r` removed, lossy UTF-8, truncated;
/// `None` if blank.
fn line_text(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if raw.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(truncate_message(String::from_utf8_lossy(raw).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::sync::mpsc;

    #[test]
    fn journal_string_message() {
        let line = r#"{"__CURSOR":"s=1","__REALTIME_TIMESTAMP":"1700000000123456","PRIORITY":"3","_SYSTEMD_UNIT":"nginx.service","SYSLOG_IDENTIFIER":"nginx","MESSAGE":"upstream timed out"}"#;
        assert_eq!(
            parse_journal_json(line),
            Some(LogLine {
                at_ms: 1_700_000_000_123,
                source: "nginx.service".into(),
                message: "upstream timed out".into(),
                priority: 3,
            })
        );
    }

    #[test]
    fn journal_array_message() {
        // "hi" followed by an invalid UTF-8 byte.
        let line = r#"{"__REALTIME_TIMESTAMP":"1000","SYSLOG_IDENTIFIER":"kernel","MESSAGE":[104,105,255]}"#;
        let parsed = parse_journal_json(line).expect("parsed");
        assert_eq!(parsed.message, "hi\u{fffd}");
        assert_eq!(parsed.source, "kernel");
        assert_eq!(parsed.at_ms, 1);
        assert_eq!(parsed.priority, 6);
    }

    #[test]
    fn journal_missing_fields() {
        let before = now_ms();
        let parsed = parse_journal_json(r#"{"MESSAGE":"hello"}"#).expect("parsed");
        assert_eq!(parsed.source, "journal");
        assert_eq!(parsed.priority, 6);
        assert_eq!(parsed.message, "hello");
        assert!(parsed.at_ms >= before);

        // Multi-valued field: first value wins.
        let parsed =
            parse_journal_json(r#"{"MESSAGE":["one","two"],"PRIORITY":"x"}"#).expect("parsed");
        assert_eq!(parsed.message, "one");
        assert_eq!(parsed.priority, 6);

        assert_eq!(parse_journal_json(r#"{"PRIORITY":"3"}"#), None);
        assert_eq!(parse_journal_json(r#"{"MESSAGE":null}"#), None);
        assert_eq!(parse_journal_json("not json"), None);
        assert_eq!(parse_journal_json("[1,2]"), None);
    }

    #[test]
    fn journal_long_message_is_truncated_on_char_boundary() {
        let message = "é".repeat(MAX_MESSAGE_BYTES); // 2 bytes each
        let line = serde_json::json!({ "MESSAGE": message }).to_string();
        let parsed = parse_journal_json(&line).expect("parsed");
        assert_eq!(parsed.message.len(), MAX_MESSAGE_BYTES);
        assert!(parsed.message.chars().all(|c| c == 'é'));

        let odd = format!("a{}", "é".repeat(MAX_MESSAGE_BYTES));
        assert_eq!(truncate_message(odd).len(), MAX_MESSAGE_BYTES - 1);
    }

    #[test]
    fn complete_lines() {
        let mut pending = b"one\r\n\ntwo\nthr".to_vec();
        assert_eq!(take_complete_lines(&mut pending), ["one", "two"]);
        assert_eq!(pending, b"thr");
        pending.extend_from_slice(b"ee\n");
        assert_eq!(take_complete_lines(&mut pending), ["three"]);
        assert!(pending.is_empty());
        assert!(take_complete_lines(&mut pending).is_empty());
    }

    #[test]
    fn log_source_config() {
        let journald: LogSource =
            serde_json::from_str(r#"{"type":"journald","units":["a.service"]}"#).expect("journald");
        assert_eq!(
            journald,
            LogSource::Journald {
                units: vec!["a.service".into()]
            }
        );
        let all: LogSource = serde_json::from_str(r#"{"type":"journald"}"#).expect("journald");
        assert_eq!(all, LogSource::Journald { units: Vec::new() });
        let file: LogSource =
            serde_json::from_str(r#"{"type":"file","path":"/var/log/app.log"}"#).expect("file");
        assert_eq!(
            file,
            LogSource::File {
                path: PathBuf::from("/var/log/app.log")
            }
        );
        assert!(
            serde_json::from_str::<LogSource>(r#"{"type":"file","path":"/x","oops":1}"#).is_err()
        );
        assert!(serde_json::from_str::<LogSource>(r#"{"type":"syslog"}"#).is_err());
    }

    fn unique_temp_path(tag: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        std::env::temp_dir().join(format!(
            "agent-logs-{tag}-{}-{nanos}.log",
            std::process::id()
        ))
    }

    fn append(path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open for append");
        file.write_all(text.as_bytes()).expect("append");
    }

    async fn recv(rx: &mut mpsc::Receiver<LogLine>) -> LogLine {
        tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .expect("no line within 3 s")
            .expect("channel closed")
    }

    #[tokio::test]
    async fn file_follower_tails_and_survives_rotation() {
        let path = unique_temp_path("follow");
        let rotated = path.with_extension("log.1");
        std::fs::write(&path, "already there\n").expect("create");

        let (tx, mut rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let handles = spawn_followers(
            &[LogSource::File { path: path.clone() }],
            tx,
            shutdown.clone(),
        );
        // Let the follower open the file and seek to its end.
        tokio::time::sleep(Duration::from_millis(1000)).await;

        append(&path, "first line\nsecond ");
        append(&path, "line\n");
        let first = recv(&mut rx).await;
        assert_eq!(first.message, "first line");
        assert_eq!(first.source, path.display().to_string());
        assert_eq!(first.priority, 6);
        assert_eq!(recv(&mut rx).await.message, "second line");

        // Truncate in place and write something shorter than before.
        std::fs::write(&path, "after truncate\n").expect("truncate");
        assert_eq!(recv(&mut rx).await.message, "after truncate");

        // Rename rotation: a new file (new inode) at the same path.
        std::fs::rename(&path, &rotated).expect("rotate");
        std::fs::write(&path, "after rename\n").expect("recreate");
        assert_eq!(recv(&mut rx).await.message, "after rename");

        shutdown.cancel();
        for handle in handles {
            tokio::time::timeout(Duration::from_secs(3), handle)
                .await
                .expect("follower stops on shutdown")
                .expect("follower task");
        }
        assert!(rx.try_recv().is_err());
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&rotated);
    }
}
