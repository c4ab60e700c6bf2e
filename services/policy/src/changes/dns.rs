//! The `dns` intent: one authoritative zone, validated field by field and rendered
//! to a zone file the agent checks with `named-checkzone` before it replaces the
//! node's copy and reloads the server.
//!
//! ```json
//! {"zone": "example.com", "ttl": 3600,
//!  "soa": {"mname": "ns1.example.com.", "rname": "hostmaster@example.com"},
//!  "records": [
//!   {"name": "@", "type": "NS", "value": "ns1"},
//!   {"name": "ns1", "type": "A", "value": "192.0.2.53"},
//!   {"name": "www", "type": "AAAA", "value": "2001:db8::80", "ttl": 300},
//!   {"name": "@", "type": "MX", "priority": 10, "value": "mail.example.net."},
//!   {"name": "_sip._tcp", "type": "SRV", "priority": 10, "weight": 5, "port": 5060, "value": "sip"},
//!   {"name": "@", "type": "CAA", "flags": 0, "tag": "issue", "value": "letsencrypt.org"},
//!   {"name": "@", "type": "TXT", "value": "v=spf1 -all"}
//! ]}
//! ```
//!
//! The SOA serial is the one the node has, plus one whenever anything else in the
//! zone changes (1 for a new zone): rendering stays a function of the intent and
//! the node's current file, so the same plan always has the same hash.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};

use super::firewall::unknown_fields;
use super::{Problem, Problems};

/// Most records in one zone intent.
pub const MAX_RECORDS: usize = 5_000;

/// Longest TXT value (split into 255-byte strings when rendered).
pub const MAX_TXT: usize = 4_000;

/// Largest TTL (RFC 2181: 2^31 - 1).
const MAX_TTL: u64 = 2_147_483_647;

/// The SOA timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    /// The primary server's name (absolute).
    pub mname: String,
    /// The responsible mailbox, as a name (absolute).
    pub rname: String,
    /// Seconds between secondaries' refreshes.
    pub refresh: u64,
    /// Seconds before a failed refresh is retried.
    pub retry: u64,
    /// Seconds after which a secondary stops answering without a refresh.
    pub expire: u64,
    /// Negative-caching TTL.
    pub minimum: u64,
}

/// One record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// Alias to a name.
    Cname(String),
    /// Delegation or authority.
    Ns(String),
    /// Mail exchanger.
    Mx(u16, String),
    /// Text.
    Txt(String),
    /// Service: priority, weight, port, target.
    Srv(u16, u16, u16, String),
    /// Certification authority authorization: flags, tag, value.
    Caa(u8, String, String),
}

impl Data {
    fn kind(&self) -> &'static str {
        match self {
            Self::A(_) => "A",
            Self::Aaaa(_) => "AAAA",
            Self::Cname(_) => "CNAME",
            Self::Ns(_) => "NS",
            Self::Mx(..) => "MX",
            Self::Txt(_) => "TXT",
            Self::Srv(..) => "SRV",
            Self::Caa(..) => "CAA",
        }
    }

    fn rdata(&self) -> String {
        match self {
            Self::A(a) => a.to_string(),
            Self::Aaaa(a) => a.to_string(),
            Self::Cname(n) | Self::Ns(n) => n.clone(),
            Self::Mx(p, n) => format!("{p} {n}"),
            Self::Txt(t) => quoted_strings(t),
            Self::Srv(p, w, port, n) => format!("{p} {w} {port} {n}"),
            Self::Caa(f, tag, v) => format!("{f} {tag} {}", quoted(v)),
        }
    }
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Owner, relative to the zone (`@` for the apex).
    pub name: String,
    /// TTL (None: the zone's).
    pub ttl: Option<u64>,
    /// Its data.
    pub data: Data,
}

/// A validated zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The origin, lower case, without the final dot.
    pub zone: String,
    /// Default TTL.
    pub ttl: u64,
    /// Start of authority.
    pub soa: Soa,
    /// The records, in the order given.
    pub records: Vec<Record>,
}

/// Whether `s` is a host name label (letters, digits, hyphens; `_` allowed for
/// service labels such as `_sip._tcp` and DKIM selectors).
fn label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// A zone origin: `example.com` (a final dot is accepted and dropped).
pub fn zone_name(s: &str) -> Result<String, String> {
    let s = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not a domain name (dot-separated labels of 1-63 letters, digits, - or _)"
        ));
    }
    Ok(s)
}

/// An owner name relative to `zone`: `@`, `www`, `*.dev` or an absolute name
/// inside the zone (`www.example.com.`).
fn owner(s: &str, zone: &str) -> Result<String, String> {
    if s == "@" {
        return Ok("@".into());
    }
    let lower = s.to_ascii_lowercase();
    let relative = if let Some(abs) = lower.strip_suffix('.') {
        if abs == zone {
            return Ok("@".into());
        }
        abs.strip_suffix(&format!(".{zone}"))
            .ok_or_else(|| format!("{s:?} is outside the zone {zone}"))?
            .to_owned()
    } else {
        lower
    };
    let labels: Vec<&str> = relative.split('.').collect();
    let ok = relative.len() + zone.len() < 253
        && labels
            .iter()
            .enumerate()
            .all(|(i, l)| label_ok(l) || (i == 0 && *l == "*"));
    if ok {
        Ok(relative)
    } else {
        Err(format!(
            "{s:?} is not a name in the zone (@, a relative name such as www or *.dev, or an absolute name ending in .{zone}.)"
        ))
    }
}

/// A target name: absolute (`mail.example.net.`), relative to the zone (`mail`),
/// or `@`.
fn target(s: &str) -> Result<String, String> {
    if s == "@" {
        return Ok("@".into());
    }
    let lower = s.to_ascii_lowercase();
    let bare = lower.strip_suffix('.').unwrap_or(&lower);
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not a host name (@, a relative name, or an absolute one ending in a dot)"
        ));
    }
    Ok(lower)
}

/// A responsible mailbox: `hostmaster@example.com` or the name form
/// `hostmaster.example.com.`; rendered as an absolute name.
fn mailbox(s: &str) -> Result<String, String> {
    let name = match s.split_once('@') {
        Some((local, domain)) => {
            if local.is_empty() || local.contains('.') || !label_ok(local) {
                return Err(format!(
                    "{s:?}: the local part must be one label without dots"
                ));
            }
            format!("{local}.{}.", zone_name(domain)?)
        }
        None => format!("{}.", zone_name(s)?),
    };
    Ok(name)
}

fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// TXT data as quoted strings of at most 255 bytes each.
fn quoted_strings(s: &str) -> String {
    let mut parts = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        if cur.len() + c.len_utf8() > 255 {
            parts.push(quoted(&cur));
            cur.clear();
        }
        cur.push(c);
    }
    parts.push(quoted(&cur));
    parts.join(" ")
}

fn uint(
    m: &Map<String, Value>,
    key: &str,
    at: &str,
    max: u64,
    problems: &mut Problems,
) -> Option<u64> {
    let v = m.get(key)?;
    match v.as_u64() {
        Some(n) if n <= max => Some(n),
        _ => {
            problems.push(Problem::new(
                &format!("{at}.{key}"),
                format!("a whole number 0-{max}"),
            ));
            None
        }
    }
}

fn string<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    at: &str,
    problems: &mut Problems,
) -> Option<&'a str> {
    match m.get(key) {
        Some(Value::String(s)) => Some(s),
        _ => {
            problems.push(Problem::new(&format!("{at}.{key}"), "required, a string"));
            None
        }
    }
}

fn record(v: &Value, at: &str, zone: &str, problems: &mut Problems) -> Option<Record> {
    let Some(m) = v.as_object() else {
        problems.push(Problem::new(
            at,
            "an object {\"name\", \"type\", \"value\", ...}",
        ));
        return None;
    };
    let before = problems.0.len();
    let kind = m
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_uppercase();
    let extra: &[&str] = match kind.as_str() {
        "MX" => &["priority"],
        "SRV" => &["priority", "weight", "port"],
        "CAA" => &["flags", "tag"],
        "A" | "AAAA" | "CNAME" | "NS" | "TXT" => &[],
        _ => {
            problems.push(Problem::new(
                &format!("{at}.type"),
                "one of A, AAAA, CNAME, NS, MX, TXT, SRV, CAA",
            ));
            return None;
        }
    };
    let mut known = vec!["name", "type", "value", "ttl"];
    known.extend_from_slice(extra);
    unknown_fields(m, at, &known, problems);
    let name = match string(m, "name", at, problems).map(|n| owner(n, zone)) {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            problems.push(Problem::new(&format!("{at}.name"), e));
            None
        }
        None => None,
    };
    let ttl = uint(m, "ttl", at, MAX_TTL, problems);
    let value = string(m, "value", at, problems).unwrap_or_default();
    let field = format!("{at}.value");
    let name_value = |problems: &mut Problems| match target(value) {
        Ok(n) => Some(n),
        Err(e) => {
            problems.push(Problem::new(&field, e));
            None
        }
    };
    let need = |key: &str, max: u64, problems: &mut Problems| -> Option<u64> {
        if m.contains_key(key) {
            uint(m, key, at, max, problems)
        } else {
            problems.push(Problem::new(
                &format!("{at}.{key}"),
                format!("required for {kind}, 0-{max}"),
            ));
            None
        }
    };
    let data = match kind.as_str() {
        "A" => match value.parse::<Ipv4Addr>() {
            Ok(a) => Some(Data::A(a)),
            Err(_) => {
                problems.push(Problem::new(
                    &field,
                    format!("{value:?} is not an IPv4 address"),
                ));
                None
            }
        },
        "AAAA" => match value.parse::<Ipv6Addr>() {
            Ok(a) => Some(Data::Aaaa(a)),
            Err(_) => {
                problems.push(Problem::new(
                    &field,
                    format!("{value:?} is not an IPv6 address"),
                ));
                None
            }
        },
        "CNAME" => name_value(problems).map(Data::Cname),
        "NS" => name_value(problems).map(Data::Ns),
        "MX" => {
            let p = need("priority", 65_535, problems);
            let n = name_value(problems);
            Some(Data::Mx(u16::try_from(p?).ok()?, n?))
        }
        "SRV" => {
            let p = need("priority", 65_535, problems);
            let w = need("weight", 65_535, problems);
            let port = need("port", 65_535, problems);
            let n = name_value(problems);
            Some(Data::Srv(
                u16::try_from(p?).ok()?,
                u16::try_from(w?).ok()?,
                u16::try_from(port?).ok()?,
                n?,
            ))
        }
        "TXT" => {
            if value.is_empty() || value.len() > MAX_TXT || value.chars().any(char::is_control) {
                problems.push(Problem::new(
                    &field,
                    format!("1-{MAX_TXT} bytes of text without control characters"),
                ));
                None
            } else {
                Some(Data::Txt(value.to_owned()))
            }
        }
        "CAA" => {
            let flags = m
                .get("flags")
                .map_or(Some(0), |_| uint(m, "flags", at, 255, problems));
            let tag = m.get("tag").and_then(Value::as_str).unwrap_or_default();
            if !["issue", "issuewild", "iodef"].contains(&tag) {
                problems.push(Problem::new(
                    &format!("{at}.tag"),
                    "one of issue, issuewild, iodef",
                ));
            }
            if value.len() > 255
                || value
                    .chars()
                    .any(|c| c.is_control() || c == '"' || c == '\\')
            {
                problems.push(Problem::new(
                    &field,
                    "at most 255 printable characters without quotes or backslashes",
                ));
            }
            Some(Data::Caa(
                u8::try_from(flags?).ok()?,
                tag.to_owned(),
                value.to_owned(),
            ))
        }
        _ => None,
    };
    if problems.0.len() > before {
        return None;
    }
    Some(Record {
        name: name?,
        ttl,
        data: data?,
    })
}

impl Zone {
    /// Validate `spec` (the intent's `spec`), naming every bad field.
    pub fn parse(spec: &Value) -> Result<Self, Problems> {
        let mut problems = Problems::default();
        let Some(m) = spec.as_object() else {
            problems.push(Problem::new(
                "spec",
                "an object {\"zone\", \"soa\", \"records\"}",
            ));
            return Err(problems);
        };
        unknown_fields(m, "spec", &["zone", "ttl", "soa", "records"], &mut problems);
        let zone = match m.get("zone").and_then(Value::as_str).map(zone_name) {
            Some(Ok(z)) => Some(z),
            Some(Err(e)) => {
                problems.push(Problem::new("spec.zone", e));
                None
            }
            None => {
                problems.push(Problem::new(
                    "spec.zone",
                    "required: the zone's origin, e.g. example.com",
                ));
                None
            }
        };
        let ttl = if m.contains_key("ttl") {
            uint(m, "ttl", "spec", MAX_TTL, &mut problems).unwrap_or(3600)
        } else {
            3600
        };
        let soa = match m.get("soa").and_then(Value::as_object) {
            None => {
                problems.push(Problem::new(
                    "spec.soa",
                    "required: {\"mname\", \"rname\"} and optional timers",
                ));
                None
            }
            Some(s) => {
                unknown_fields(
                    s,
                    "spec.soa",
                    &["mname", "rname", "refresh", "retry", "expire", "minimum"],
                    &mut problems,
                );
                let mname = match string(s, "mname", "spec.soa", &mut problems).map(target) {
                    Some(Ok(n)) if n.ends_with('.') => Some(n),
                    Some(Ok(_)) | Some(Err(_)) => {
                        problems.push(Problem::new(
                            "spec.soa.mname",
                            "the primary server's absolute name, ending in a dot",
                        ));
                        None
                    }
                    None => None,
                };
                let rname = match string(s, "rname", "spec.soa", &mut problems).map(mailbox) {
                    Some(Ok(n)) => Some(n),
                    Some(Err(e)) => {
                        problems.push(Problem::new("spec.soa.rname", e));
                        None
                    }
                    None => None,
                };
                let timer = |k: &str, d: u64, p: &mut Problems| {
                    if s.contains_key(k) {
                        uint(s, k, "spec.soa", MAX_TTL, p).unwrap_or(d)
                    } else {
                        d
                    }
                };
                let (refresh, retry, expire, minimum) = (
                    timer("refresh", 7200, &mut problems),
                    timer("retry", 3600, &mut problems),
                    timer("expire", 1_209_600, &mut problems),
                    timer("minimum", 3600, &mut problems),
                );
                Some(Soa {
                    mname: mname.unwrap_or_default(),
                    rname: rname.unwrap_or_default(),
                    refresh,
                    retry,
                    expire,
                    minimum,
                })
            }
        };
        let mut records = Vec::new();
        match (m.get("records").and_then(Value::as_array), &zone) {
            (Some(rs), Some(z)) if rs.len() <= MAX_RECORDS => {
                for (i, r) in rs.iter().enumerate() {
                    if let Some(r) = record(r, &format!("spec.records[{i}]"), z, &mut problems) {
                        records.push((i, r));
                    }
                }
            }
            (Some(_), Some(_)) => problems.push(Problem::new(
                "spec.records",
                format!("at most {MAX_RECORDS} records"),
            )),
            (None, _) => problems.push(Problem::new(
                "spec.records",
                "required: a list of records, with at least one NS at @",
            )),
            (Some(_), None) => {}
        }
        // Whole-zone rules: an NS at the apex; a CNAME alone at its name and never
        // at the apex; no record twice.
        if zone.is_some() && problems.is_empty() {
            if !records
                .iter()
                .any(|(_, r)| r.name == "@" && matches!(r.data, Data::Ns(_)))
            {
                problems.push(Problem::new(
                    "spec.records",
                    "the zone needs at least one NS record at @",
                ));
            }
            let mut by_name: BTreeMap<&str, Vec<(usize, &Record)>> = BTreeMap::new();
            for (i, r) in &records {
                by_name.entry(r.name.as_str()).or_default().push((*i, r));
            }
            for (name, rs) in &by_name {
                if let Some((i, _)) = rs.iter().find(|(_, r)| matches!(r.data, Data::Cname(_))) {
                    if *name == "@" {
                        problems.push(Problem::new(
                            &format!("spec.records[{i}].name"),
                            "a CNAME cannot be at the zone's apex (it has SOA and NS)",
                        ));
                    } else if rs.len() > 1 {
                        problems.push(Problem::new(&format!("spec.records[{i}].name"), format!("{name} has a CNAME and other records: a CNAME must be alone at its name")));
                    }
                }
                let mut seen = BTreeSet::new();
                for (i, r) in rs {
                    if !seen.insert((r.data.kind(), r.data.rdata())) {
                        problems.push(Problem::new(
                            &format!("spec.records[{i}]"),
                            format!("the same {} record at {name} twice", r.data.kind()),
                        ));
                    }
                }
            }
        }
        match (zone, soa) {
            (Some(zone), Some(soa)) if problems.is_empty() => Ok(Self {
                zone,
                ttl,
                soa,
                records: records.into_iter().map(|(_, r)| r).collect(),
            }),
            _ => Err(problems),
        }
    }

    /// The zone file for the node, over what it has now (`base`, empty when the
    /// zone is new): the serial is the node's plus one when anything else changed.
    pub fn render(&self, intent: &str, base: &str) -> String {
        let old = serial(base);
        let same = self.body(intent, old.unwrap_or(1));
        if old.is_some() && same == base {
            return same;
        }
        // Serial arithmetic (RFC 1982): wrap, skipping 0.
        let next = match old {
            None => 1,
            Some(s) => match s.wrapping_add(1) {
                0 => 1,
                n => n,
            },
        };
        self.body(intent, next)
    }

    fn body(&self, intent: &str, serial: u32) -> String {
        let mut out = String::new();
        let s = &self.soa;
        let _ = writeln!(
            out,
            "; Rendered by Lattice from intent {intent}: edits on the node show as drift."
        );
        let _ = writeln!(out, "$ORIGIN {}.", self.zone);
        let _ = writeln!(out, "$TTL {}", self.ttl);
        let _ = writeln!(out, "@\tIN\tSOA\t{} {} (", s.mname, s.rname);
        let _ = writeln!(out, "\t{serial}\t; serial");
        let _ = writeln!(out, "\t{}\t; refresh", s.refresh);
        let _ = writeln!(out, "\t{}\t; retry", s.retry);
        let _ = writeln!(out, "\t{}\t; expire", s.expire);
        let _ = writeln!(out, "\t{}\t; minimum", s.minimum);
        let _ = writeln!(out, "\t)");
        for r in &self.records {
            let ttl = r.ttl.map(|t| t.to_string()).unwrap_or_default();
            let _ = writeln!(
                out,
                "{}\t{ttl}\tIN\t{}\t{}",
                r.name,
                r.data.kind(),
                r.data.rdata()
            );
        }
        out
    }
}

/// The SOA serial of a zone file Lattice rendered (None: no zone, or not ours).
pub fn serial(zone_file: &str) -> Option<u32> {
    zone_file
        .lines()
        .find_map(|l| l.trim().strip_suffix("; serial"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn example() -> Value {
        json!({"zone": "Example.com.", "soa": {"mname": "ns1.example.com.", "rname": "hostmaster@example.com"},
        "records": [
            {"name": "@", "type": "NS", "value": "ns1"},
            {"name": "ns1", "type": "A", "value": "192.0.2.53"},
            {"name": "www.example.com.", "type": "AAAA", "value": "2001:db8::80", "ttl": 300},
            {"name": "@", "type": "MX", "priority": 10, "value": "mail.example.net."},
            {"name": "_sip._tcp", "type": "SRV", "priority": 10, "weight": 5, "port": 5060, "value": "sip"},
            {"name": "@", "type": "CAA", "tag": "issue", "value": "letsencrypt.org"},
            {"name": "@", "type": "TXT", "value": "v=spf1 \"quoted\" -all"},
            {"name": "*.dev", "type": "CNAME", "value": "www"}
        ]})
    }

    #[test]
    fn a_zone_renders_with_its_serial_bumped_on_change() {
        let z = Zone::parse(&example()).unwrap();
        let first = z.render("dns", "");
        assert_eq!(serial(&first), Some(1));
        assert!(first.contains("$ORIGIN example.com.\n"), "{first}");
        assert!(
            first.contains("@\tIN\tSOA\tns1.example.com. hostmaster.example.com. (\n"),
            "{first}"
        );
        assert!(
            first.contains("www\t300\tIN\tAAAA\t2001:db8::80\n"),
            "{first}"
        );
        assert!(
            first.contains("_sip._tcp\t\tIN\tSRV\t10 5 5060 sip\n"),
            "{first}"
        );
        assert!(
            first.contains("@\t\tIN\tCAA\t0 issue \"letsencrypt.org\"\n"),
            "{first}"
        );
        assert!(
            first.contains("@\t\tIN\tTXT\t\"v=spf1 \\\"quoted\\\" -all\"\n"),
            "{first}"
        );
        // Unchanged: the same bytes, serial kept.
        assert_eq!(z.render("dns", &first), first);
        // Changed: serial + 1.
        let mut spec = example();
        spec["ttl"] = json!(600);
        let second = Zone::parse(&spec).unwrap().render("dns", &first);
        assert_eq!(serial(&second), Some(2));
        // A hand-edited copy on the node: the next serial is above its.
        let edited = first.replace("\t1\t; serial", "\t41\t; serial");
        assert_eq!(z.render("dns", &edited), edited);
        let edited = format!("{edited}extra\t\tIN\tA\t192.0.2.9\n");
        assert_eq!(serial(&z.render("dns", &edited)), Some(42));
        assert_eq!(
            serial(&z.render(
                "dns",
                &format!(
                    "{}x\n",
                    first.replace("\t1\t; serial", "\t4294967295\t; serial")
                )
            )),
            Some(1)
        );
    }

    #[test]
    fn long_txt_is_split_into_strings() {
        let mut spec = example();
        spec["records"][6]["value"] = json!("x".repeat(600));
        let z = Zone::parse(&spec).unwrap().render("d", "");
        let line = z.lines().find(|l| l.contains("TXT")).unwrap();
        assert_eq!(line.matches('"').count(), 6, "{line}");
    }

    #[test]
    fn every_bad_field_is_named() {
        let err = Zone::parse(
            &json!({"zone": "bad zone", "soa": {"mname": "ns1", "rname": "a.b@c"},
            "records": [], "x": 1}),
        )
        .unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["spec.x", "spec.zone", "spec.soa.mname", "spec.soa.rname"],
            "{err}"
        );
        let err = Zone::parse(&json!({"zone": "example.com", "soa": {"mname": "ns1.example.com.", "rname": "h@example.com"},
            "records": [
                {"name": "@", "type": "A", "value": "300.1.1.1"},
                {"name": "www", "type": "AAAA", "value": "10.0.0.1"},
                {"name": "x.example.org.", "type": "A", "value": "192.0.2.1"},
                {"name": "@", "type": "MX", "value": "mail"},
                {"name": "@", "type": "SPF", "value": "v=spf1"},
                {"name": "@", "type": "CAA", "tag": "nope", "value": "ca"},
                {"name": "@", "type": "NS", "value": "ns 1"},
                {"name": "@", "type": "A", "value": "192.0.2.1", "ttl": -1}
            ]}))
        .unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.records[0].value",
                "spec.records[1].value",
                "spec.records[2].name",
                "spec.records[3].priority",
                "spec.records[4].type",
                "spec.records[5].tag",
                "spec.records[6].value",
                "spec.records[7].ttl",
            ],
            "{err}"
        );
        let err = Zone::parse(&json!({"zone": "example.com", "soa": {"mname": "ns1.example.com.", "rname": "h@example.com"},
            "records": [
                {"name": "@", "type": "CNAME", "value": "x"},
                {"name": "www", "type": "CNAME", "value": "x"},
                {"name": "www", "type": "A", "value": "192.0.2.1"},
                {"name": "mail", "type": "A", "value": "192.0.2.1"},
                {"name": "mail", "type": "A", "value": "192.0.2.1"}
            ]}))
        .unwrap_err();
        let msgs = err.to_string();
        assert!(msgs.contains("at least one NS"), "{msgs}");
        let err = Zone::parse(&json!({"zone": "example.com", "soa": {"mname": "ns1.example.com.", "rname": "h@example.com"},
            "records": [
                {"name": "@", "type": "NS", "value": "ns.example.net."},
                {"name": "@", "type": "CNAME", "value": "x"},
                {"name": "www", "type": "CNAME", "value": "x"},
                {"name": "www", "type": "A", "value": "192.0.2.1"},
                {"name": "mail", "type": "A", "value": "192.0.2.1"},
                {"name": "mail", "type": "A", "value": "192.0.2.1"}
            ]}))
        .unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.records[1].name",
                "spec.records[5]",
                "spec.records[2].name"
            ],
            "{err}"
        );
    }
}
