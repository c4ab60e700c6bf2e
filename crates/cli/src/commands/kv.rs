//! `lattice kv get|put|delete|list`.

use std::io::Read as _;

use anyhow::{Context as _, bail};
use reqwest::Method;
use reqwest::header::{ETAG, IF_MATCH, IF_NONE_MATCH};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use super::{Ctx, encode_component, is_status, parse, segment, slash_path};
use crate::args::KvCommand;
use crate::output::{self, Format, Table, format_opt_ms};

/// Versions are opaque: accept a JSON string or number and keep its text.
fn any_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// One key as `GET`, `PUT` and list answers describe it.
#[derive(Debug, Deserialize)]
struct Entry {
    key: String,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default, deserialize_with = "any_string")]
    version: String,
    #[serde(default)]
    updated_at_ms: Option<i64>,
    #[serde(default)]
    expires_at_ms: Option<i64>,
    #[serde(default)]
    withheld: bool,
}

#[derive(Debug, Deserialize)]
struct Page {
    entries: Vec<Value>,
    #[serde(default)]
    next_cursor: Option<String>,
}

fn table(entries: Vec<Entry>, with_values: bool) -> Table {
    let mut headers = vec!["KEY", "VERSION", "UPDATED", "EXPIRES"];
    if with_values {
        headers.push("VALUE");
    }
    let mut t = Table::new(&headers);
    for e in entries {
        let mut row = vec![
            e.key,
            e.version,
            format_opt_ms(e.updated_at_ms, "-"),
            format_opt_ms(e.expires_at_ms, "never"),
        ];
        if with_values {
            row.push(match e.value {
                Some(v) => v.to_string(),
                None if e.withheld => "(secret: read the key)".to_owned(),
                None => "-".to_owned(),
            });
        }
        t.row(row);
    }
    t
}

/// `/api/v1/kv/{bucket}/{key}`, each key segment percent-encoded.
fn key_url(bucket: &str, key: &str) -> anyhow::Result<String> {
    Ok(format!(
        "/api/v1/kv/{}/{}",
        segment(bucket)?,
        slash_path(key, "key", true)?
    ))
}

/// The value to store: `text` parsed as JSON, or as a plain string with `--string`.
fn parse_value(text: &str, as_string: bool) -> anyhow::Result<Value> {
    if as_string {
        return Ok(Value::String(text.to_owned()));
    }
    serde_json::from_str(text).with_context(|| {
        let shown: String = text.chars().take(40).collect();
        format!("the value {shown:?} is not valid JSON (pass --string to store it as text)")
    })
}

/// The VALUE argument, read verbatim from stdin when it is `-`.
fn read_value(arg: &str, as_string: bool) -> anyhow::Result<Value> {
    if arg != "-" {
        return parse_value(arg, as_string);
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .context("cannot read the value from stdin")?;
    let text = String::from_utf8(bytes).context("the value on stdin is not valid UTF-8")?;
    parse_value(&text, as_string)
}

/// `If-Match` for a version: quoted, as an entity tag, unless it already is one.
fn if_match_value(version: &str) -> anyhow::Result<String> {
    let v = version.trim();
    let tag = if v.starts_with('"') || v.starts_with("W/\"") {
        v.to_owned()
    } else {
        format!("\"{v}\"")
    };
    let inner = tag.trim_start_matches("W/").trim_matches('"');
    if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        bail!("invalid version {version:?} for --if-match");
    }
    Ok(tag)
}

/// The body of a `PUT`.
fn put_body(value: Value, ttl_s: Option<i64>) -> Value {
    let mut body = Map::new();
    body.insert("value".into(), value);
    if let Some(t) = ttl_s {
        body.insert("ttl_s".into(), t.into());
    }
    Value::Object(body)
}

/// The query string of one list page.
fn list_query(
    prefix: Option<&str>,
    limit: Option<u32>,
    cursor: Option<&str>,
    values: bool,
) -> String {
    let mut q = vec![format!("values={values}")];
    if let Some(p) = prefix {
        q.push(format!("prefix={}", encode_component(p)));
    }
    if let Some(l) = limit {
        q.push(format!("limit={l}"));
    }
    if let Some(c) = cursor {
        q.push(format!("cursor={}", encode_component(c)));
    }
    q.join("&")
}

/// Run a `kv` subcommand.
pub async fn run(ctx: &Ctx, cmd: KvCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        KvCommand::Get { bucket, key } => {
            let answer = api.get(&key_url(&bucket, &key)?).await?;
            match ctx.format {
                Format::Json => output::print_json(&answer)?,
                Format::Table => {
                    let entry: Entry = parse(&answer)?;
                    output::print_json(&entry.value.unwrap_or(Value::Null))?;
                }
            }
        }
        KvCommand::Put {
            bucket,
            key,
            value,
            string,
            ttl,
            if_match,
            if_absent,
        } => {
            let path = key_url(&bucket, &key)?;
            let body = put_body(read_value(&value, string)?, ttl);
            let if_match = if_match.as_deref().map(if_match_value).transpose()?;
            let reply = api
                .send_with(Method::PUT, &path, |mut req| {
                    if let Some(tag) = &if_match {
                        req = req.header(IF_MATCH, tag);
                    }
                    if if_absent {
                        req = req.header(IF_NONE_MATCH, "*");
                    }
                    req.json(&body)
                })
                .await
                .map_err(|e| {
                    if !is_status(&e, 412) {
                        e
                    } else if if_absent {
                        e.context(format!("key {key:?} already exists (--if-absent)"))
                    } else {
                        let v = if_match.as_deref().unwrap_or("");
                        e.context(format!(
                            "key {key:?} is no longer at version {v} (--if-match)"
                        ))
                    }
                })?;
            ctx.show(&reply.body, |e: Entry| table(vec![e], false))?;
            let entry: Entry = parse(&reply.body)?;
            let version = if entry.version.is_empty() {
                let etag = reply.headers.get(ETAG).and_then(|v| v.to_str().ok());
                etag.unwrap_or("?").trim_matches('"').to_owned()
            } else {
                entry.version
            };
            eprintln!("stored {bucket}/{key} (version {version})");
        }
        KvCommand::Delete { bucket, key } => {
            api.delete(&key_url(&bucket, &key)?).await?;
            eprintln!("deleted {bucket}/{key}");
        }
        KvCommand::List {
            bucket,
            prefix,
            limit,
            cursor,
            all,
            values,
        } => {
            let base = format!("/api/v1/kv/{}", segment(&bucket)?);
            let mut entries = Vec::new();
            let mut cursor = cursor;
            let mut first_answer = None;
            loop {
                let query = list_query(prefix.as_deref(), limit, cursor.as_deref(), values);
                let answer = api.get(&format!("{base}?{query}")).await?;
                let page: Page = parse(&answer)?;
                entries.extend(page.entries);
                let next = page.next_cursor.filter(|c| !c.is_empty());
                if !all {
                    if let Some(c) = &next {
                        eprintln!(
                            "more keys follow: pass --cursor {c} for the next page, or --all"
                        );
                    }
                    first_answer = Some(answer);
                    break;
                }
                match next {
                    Some(c) if cursor.as_deref() == Some(c.as_str()) => {
                        bail!("the server returned the same cursor twice ({c}); stopping")
                    }
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let answer =
                first_answer.unwrap_or_else(|| json!({ "entries": entries, "next_cursor": null }));
            ctx.show(&answer, |p: Page| -> Table {
                let parsed = p.entries.iter().filter_map(|e| parse::<Entry>(e).ok());
                table(parsed.collect(), values)
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_urls_encode_each_segment() {
        assert_eq!(key_url("b", "a/b c").unwrap(), "/api/v1/kv/b/a/b%20c");
        assert_eq!(
            key_url("my bucket", "x?y").unwrap(),
            "/api/v1/kv/my%20bucket/x%3Fy"
        );
        assert!(key_url("b", "a/../c").is_err());
        assert!(key_url("b", "").is_err());
        assert!(key_url("..", "k").is_err());
    }

    #[test]
    fn values_are_json_unless_string() {
        assert_eq!(parse_value("42", false).unwrap(), json!(42));
        assert_eq!(
            parse_value(r#"{"a":[1,true]}"#, false).unwrap(),
            json!({"a": [1, true]})
        );
        assert_eq!(parse_value("\"hi\"\n", false).unwrap(), json!("hi"));
        assert_eq!(parse_value("hello", true).unwrap(), json!("hello"));
        assert_eq!(parse_value("42", true).unwrap(), json!("42"));
        let err = parse_value("hello", false).unwrap_err().to_string();
        assert!(err.contains("--string"), "{err}");
    }

    #[test]
    fn put_bodies_and_conditions() {
        assert_eq!(put_body(json!(1), None), json!({"value": 1}));
        assert_eq!(
            put_body(json!("x"), Some(3600)),
            json!({"value": "x", "ttl_s": 3600})
        );
        assert_eq!(if_match_value("7").unwrap(), "\"7\"");
        assert_eq!(if_match_value("\"7\"").unwrap(), "\"7\"");
        assert_eq!(if_match_value("W/\"7\"").unwrap(), "W/\"7\"");
        for bad in ["", "a\"b", "a b", "\"\""] {
            assert!(if_match_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_queries_are_encoded() {
        assert_eq!(list_query(None, None, None, false), "values=false");
        assert_eq!(
            list_query(Some("users/a b"), Some(50), Some("c+/="), true),
            "values=true&prefix=users%2Fa%20b&limit=50&cursor=c%2B%2F%3D"
        );
    }

    #[test]
    fn entries_render_with_any_version_type() {
        let page: Page = parse(&json!({"entries": [
            {"key": "a/b", "version": 3, "updated_at_ms": 0, "expires_at_ms": null, "value": {"x": 1}},
            {"key": "c", "version": "v9", "updated_at_ms": 0, "expires_at_ms": 86_400_000}
        ], "next_cursor": null}))
        .unwrap();
        let entries: Vec<Entry> = page.entries.iter().map(|e| parse(e).unwrap()).collect();
        assert_eq!(
            table(entries, true).render(),
            "KEY  VERSION  UPDATED               EXPIRES               VALUE\n\
             a/b  3        1970-01-01 00:00:00Z  never                 {\"x\":1}\n\
             c    v9       1970-01-01 00:00:00Z  1970-01-02 00:00:00Z  -\n"
        );
    }
}
