//! The `firewall` intent: the nftables table Lattice owns on a node (`inet
//! lattice`), validated field by field and rendered to the exact ruleset the agent
//! applies. Lattice never writes any other table: the agent replaces this one table
//! in one `nft -f` transaction.
//!
//! ```json
//! {"default": "drop", "rules": [
//!   {"action": "accept", "protocol": "tcp", "ports": "22,443", "from": "10.0.0.0/8", "comment": "ssh"},
//!   {"action": "accept", "protocol": "udp", "ports": "51820", "interface": "eth0"},
//!   {"action": "drop", "protocol": "any", "from": ["192.0.2.0/24", "2001:db8::/32"]}
//! ]}
//! ```
//!
//! The input chain always accepts loopback and established or related traffic and
//! drops invalid packets before the rules, so a `drop` default never cuts the
//! agent's own connection to the server.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::{Problem, Problems};

/// The table Lattice owns.
pub const TABLE: &str = "inet lattice";

/// Most rules in one intent.
pub const MAX_RULES: usize = 500;

/// What a chain does with a packet no rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Accept,
    /// Drop it silently.
    Drop,
    /// Refuse it (TCP reset or ICMP unreachable).
    Reject,
}

impl Verdict {
    fn nft(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Drop => "drop",
            Self::Reject => "reject",
        }
    }
}

/// Which packets a rule matches by protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP (ports allowed).
    Tcp,
    /// UDP (ports allowed).
    Udp,
    /// ICMP (IPv4).
    Icmp,
    /// ICMPv6.
    Icmpv6,
    /// Every protocol.
    Any,
}

/// An address or network, v4 or v6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parse `10.0.0.0/8`, `2001:db8::/32` or a bare address (a /32 or /128).
    /// Host bits must be zero: `10.0.0.1/8` is refused rather than guessed at.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IPv4 or IPv6 address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0-{max}"))?,
        };
        let bits: u128 = match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        let host_bits = u32::from(max - prefix);
        let mask = 1u128.checked_shl(host_bits).map_or(u128::MAX, |b| b - 1);
        let host = bits & mask;
        if host != 0 {
            return Err(format!(
                "{text:?} has host bits set: write the network address with /{prefix}"
            ));
        }
        Ok(Self { addr, prefix })
    }

    /// The first and last address, as numbers.
    fn interval(self) -> (u128, u128) {
        let max: u32 = if self.addr.is_ipv4() { 32 } else { 128 };
        let start = match self.addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        let host_bits = max - u32::from(self.prefix);
        let span = 1u128.checked_shl(host_bits).map_or(u128::MAX, |b| b - 1);
        (start, start + span)
    }

    /// Whether `other` lies within this network.
    fn contains(self, other: &Self) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() || other.prefix < self.prefix {
            return false;
        }
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        let bits = |a: IpAddr| match a {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        let shift = u32::from(max - self.prefix);
        bits(self.addr).checked_shr(shift).unwrap_or(0)
            == bits(other.addr).checked_shr(shift).unwrap_or(0)
    }

    fn family(self) -> &'static str {
        if self.addr.is_ipv4() { "ip" } else { "ip6" }
    }

    fn nft(self) -> String {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            self.addr.to_string()
        } else {
            format!("{}/{}", self.addr, self.prefix)
        }
    }
}

/// A port or an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ports {
    /// First port.
    pub from: u16,
    /// Last port (equal to `from` for one port).
    pub to: u16,
}

/// One rule of the input chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What to do with a matching packet.
    pub action: Verdict,
    /// Which protocol.
    pub protocol: Protocol,
    /// Destination ports (TCP and UDP only; empty: every port).
    pub ports: Vec<Ports>,
    /// Source networks (empty: any).
    pub from: Vec<Cidr>,
    /// Destination networks (empty: any).
    pub to: Vec<Cidr>,
    /// Incoming interface (None: any).
    pub interface: Option<String>,
    /// Shown in the ruleset.
    pub comment: Option<String>,
}

/// A validated firewall intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    /// The input chain's policy.
    pub default: Verdict,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

fn verdict(v: &Value, field: &str, problems: &mut Problems, reject_ok: bool) -> Option<Verdict> {
    match v.as_str() {
        Some("accept") => Some(Verdict::Accept),
        Some("drop") => Some(Verdict::Drop),
        Some("reject") if reject_ok => Some(Verdict::Reject),
        _ => {
            let allowed = if reject_ok {
                "accept, drop or reject"
            } else {
                "accept or drop (a chain's policy cannot be reject)"
            };
            problems.push(Problem::new(field, format!("must be {allowed}")));
            None
        }
    }
}

fn ports(text: &str, field: &str, problems: &mut Problems) -> Vec<Ports> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        let parse = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
        let range = match part.split_once('-') {
            Some((a, b)) => parse(a).zip(parse(b)).filter(|(a, b)| a < b),
            None => parse(part).map(|p| (p, p)),
        };
        match range {
            Some((from, to)) => out.push(Ports { from, to }),
            None => {
                problems.push(Problem::new(
                    field,
                    format!(
                        "{part:?} is not a port (1-65535) or a range like 8000-8100 (in {text:?})"
                    ),
                ));
                return Vec::new();
            }
        }
    }
    out.sort();
    out.dedup();
    if let Some(w) = out.windows(2).find(|w| w[1].from <= w[0].to) {
        problems.push(Problem::new(
            field,
            format!(
                "ports {}-{} and {}-{} overlap (in {text:?})",
                w[0].from, w[0].to, w[1].from, w[1].to
            ),
        ));
        return Vec::new();
    }
    out
}

fn cidrs(v: &Value, field: &str, problems: &mut Problems) -> Vec<Cidr> {
    let items: Vec<(String, &Value)> = match v {
        Value::String(_) => vec![(field.to_owned(), v)],
        Value::Array(a) if !a.is_empty() && a.len() <= 100 => a
            .iter()
            .enumerate()
            .map(|(i, x)| (format!("{field}[{i}]"), x))
            .collect(),
        _ => {
            problems.push(Problem::new(
                field,
                "a network like \"10.0.0.0/8\" or a list of 1-100 of them",
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (f, item) in items {
        match item.as_str().map(Cidr::parse) {
            Some(Ok(c)) => out.push(c),
            Some(Err(e)) => problems.push(Problem::new(&f, e)),
            None => problems.push(Problem::new(&f, "must be a string")),
        }
    }
    out.sort();
    out.dedup();
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[i + 1..].iter().find(|b| a.contains(b) || b.contains(a)) {
            problems.push(Problem::new(
                field,
                format!(
                    "{} and {} overlap: name each network once",
                    a.nft(),
                    b.nft()
                ),
            ));
            return Vec::new();
        }
    }
    out
}

/// Text shown in a comment or matched as an interface name: printable, no quotes.
pub(super) fn plain(v: &Value, field: &str, max: usize, problems: &mut Problems) -> Option<String> {
    let s = v.as_str().unwrap_or_default();
    let ok = v.is_string()
        && !s.is_empty()
        && s.len() <= max
        && s.chars().all(|c| !c.is_control() && c != '"' && c != '\\');
    if ok {
        Some(s.to_owned())
    } else {
        problems.push(Problem::new(
            field,
            format!("1-{max} printable characters without quotes or backslashes"),
        ));
        None
    }
}

fn interface(v: &Value, field: &str, problems: &mut Problems) -> Option<String> {
    let s = v.as_str().unwrap_or_default();
    // Linux interface names: at most 15 bytes, no '/', no whitespace; `*` as a
    // trailing wildcard (nft's `eth*`).
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@');
    let stem = s.strip_suffix('*').unwrap_or(s);
    let ok = !stem.is_empty() && s.len() <= 15 && stem.chars().all(name_char);
    if ok {
        Some(s.to_owned())
    } else {
        problems.push(Problem::new(
            field,
            format!("{s:?} is not an interface name (at most 15 of a-z, 0-9, - _ . @, or a prefix ending in *)"),
        ));
        None
    }
}

pub(super) fn unknown_fields(
    m: &Map<String, Value>,
    at: &str,
    known: &[&str],
    problems: &mut Problems,
) {
    for k in m.keys().filter(|k| !known.contains(&k.as_str())) {
        problems.push(Problem::new(
            &format!("{at}.{k}"),
            format!("unknown field (known: {})", known.join(", ")),
        ));
    }
}

impl Firewall {
    /// Validate `spec` (the intent's `spec`), naming every bad field.
    pub fn parse(spec: &Value) -> Result<Self, Problems> {
        let mut problems = Problems::default();
        let Some(m) = spec.as_object() else {
            problems.push(Problem::new(
                "spec",
                "an object {\"default\": \"drop\", \"rules\": [...]}",
            ));
            return Err(problems);
        };
        unknown_fields(m, "spec", &["default", "rules"], &mut problems);
        let default = match m.get("default") {
            None => Some(Verdict::Drop),
            Some(v) => verdict(v, "spec.default", &mut problems, false),
        };
        let raw_rules = match m.get("rules") {
            None => Vec::new(),
            Some(Value::Array(a)) if a.len() <= MAX_RULES => a.clone(),
            Some(_) => {
                problems.push(Problem::new(
                    "spec.rules",
                    format!("a list of at most {MAX_RULES} rules"),
                ));
                Vec::new()
            }
        };
        let mut rules = Vec::new();
        for (i, r) in raw_rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            let Some(r) = r.as_object() else {
                problems.push(Problem::new(&at, "a rule is an object"));
                continue;
            };
            unknown_fields(
                r,
                &at,
                &[
                    "action",
                    "protocol",
                    "ports",
                    "from",
                    "to",
                    "interface",
                    "comment",
                ],
                &mut problems,
            );
            let action = match r.get("action") {
                Some(v) => verdict(v, &format!("{at}.action"), &mut problems, true),
                None => {
                    problems.push(Problem::new(
                        &format!("{at}.action"),
                        "required: accept, drop or reject",
                    ));
                    None
                }
            };
            let protocol = match r.get("protocol").map(Value::as_str) {
                None => Some(Protocol::Any),
                Some(Some("tcp")) => Some(Protocol::Tcp),
                Some(Some("udp")) => Some(Protocol::Udp),
                Some(Some("icmp")) => Some(Protocol::Icmp),
                Some(Some("icmpv6")) => Some(Protocol::Icmpv6),
                Some(Some("any")) => Some(Protocol::Any),
                Some(_) => {
                    problems.push(Problem::new(
                        &format!("{at}.protocol"),
                        "must be tcp, udp, icmp, icmpv6 or any",
                    ));
                    None
                }
            };
            let port_list = match r.get("ports") {
                None => Vec::new(),
                Some(Value::String(s)) => ports(s, &format!("{at}.ports"), &mut problems),
                Some(Value::Number(n)) => {
                    ports(&n.to_string(), &format!("{at}.ports"), &mut problems)
                }
                Some(_) => {
                    problems.push(Problem::new(
                        &format!("{at}.ports"),
                        "a port, a list like \"22,443\" or a range like \"8000-8100\"",
                    ));
                    Vec::new()
                }
            };
            if !port_list.is_empty() && !matches!(protocol, Some(Protocol::Tcp | Protocol::Udp)) {
                problems.push(Problem::new(
                    &format!("{at}.ports"),
                    "ports need protocol tcp or udp",
                ));
            }
            let from = r
                .get("from")
                .map(|v| cidrs(v, &format!("{at}.from"), &mut problems))
                .unwrap_or_default();
            let to = r
                .get("to")
                .map(|v| cidrs(v, &format!("{at}.to"), &mut problems))
                .unwrap_or_default();
            let families = |c: &[Cidr]| {
                (
                    c.iter().any(|c| c.addr.is_ipv4()),
                    c.iter().any(|c| c.addr.is_ipv6()),
                )
            };
            let (from4, from6) = families(&from);
            let (to4, to6) = families(&to);
            let shared_family = from4 && to4 || from6 && to6;
            if !(from.is_empty() || to.is_empty() || shared_family) {
                problems.push(Problem::new(
                    &format!("{at}.to"),
                    "from and to share no address family (IPv4 with IPv4, IPv6 with IPv6)",
                ));
            }
            match protocol {
                Some(Protocol::Icmp) if (from6 || to6) && !(from4 || to4) => {
                    problems.push(Problem::new(
                        &format!("{at}.protocol"),
                        "icmp is IPv4: use icmpv6 for IPv6 networks",
                    ));
                }
                Some(Protocol::Icmpv6) if (from4 || to4) && !(from6 || to6) => {
                    problems.push(Problem::new(
                        &format!("{at}.protocol"),
                        "icmpv6 is IPv6: use icmp for IPv4 networks",
                    ));
                }
                _ => {}
            }
            let interface = r
                .get("interface")
                .and_then(|v| interface(v, &format!("{at}.interface"), &mut problems));
            let comment = r
                .get("comment")
                .and_then(|v| plain(v, &format!("{at}.comment"), 128, &mut problems));
            if let (Some(action), Some(protocol)) = (action, protocol) {
                rules.push(Rule {
                    action,
                    protocol,
                    ports: port_list,
                    from,
                    to,
                    interface,
                    comment,
                });
            }
        }
        match default {
            Some(default) if problems.is_empty() => Ok(Self { default, rules }),
            _ => Err(problems),
        }
    }

    /// The table, exactly as the agent loads it and exactly as `nft list table inet
    /// lattice` prints it back (so what a node reports compares byte for byte, and
    /// any difference is drift): deterministic, the same intent always renders the
    /// same bytes.
    pub fn render(&self, intent: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "table {TABLE} {{");
        let _ = writeln!(
            out,
            "\tcomment \"Managed by Lattice (intent {intent}); hand edits show as drift\""
        );
        let _ = writeln!(out, "\tchain input {{");
        let _ = writeln!(
            out,
            "\t\ttype filter hook input priority filter; policy {};",
            self.default.nft()
        );
        out.push_str("\t\tiifname \"lo\" accept\n");
        out.push_str("\t\tct state established,related accept\n");
        out.push_str("\t\tct state invalid drop\n");
        for rule in &self.rules {
            for line in rule.lines() {
                let _ = writeln!(out, "\t\t{line}");
            }
        }
        out.push_str("\t}\n}\n");
        out
    }
}

impl Rule {
    /// The nft rule lines for this rule: one per address family its networks
    /// need (a rule naming no network is one line for both families).
    fn lines(&self) -> Vec<String> {
        let families: Vec<Option<&str>> = if self.from.is_empty() && self.to.is_empty() {
            vec![None]
        } else {
            ["ip", "ip6"]
                .into_iter()
                .filter(|f| {
                    let has = |c: &[Cidr]| c.is_empty() || c.iter().any(|c| c.family() == *f);
                    has(&self.from) && has(&self.to)
                })
                .map(Some)
                .collect()
        };
        families
            .into_iter()
            .filter(|f| {
                !matches!(
                    (self.protocol, f),
                    (Protocol::Icmp, Some("ip6")) | (Protocol::Icmpv6, Some("ip"))
                )
            })
            .map(|family| self.line(family))
            .collect()
    }

    fn line(&self, family: Option<&str>) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(i) = &self.interface {
            parts.push(format!("iifname \"{i}\""));
        }
        let set = |c: &[Cidr], f: &str| {
            let v4 = f == "ip";
            let intervals: Vec<(u128, u128)> = c
                .iter()
                .filter(|c| c.family() == f)
                .map(|c| c.interval())
                .collect();
            braced(
                merged(&intervals)
                    .into_iter()
                    .map(|(a, b)| address_interval(a, b, v4))
                    .collect(),
            )
        };
        if let Some(f) = family {
            if !self.from.is_empty() {
                parts.push(format!("{f} saddr {}", set(&self.from, f)));
            }
            if !self.to.is_empty() {
                parts.push(format!("{f} daddr {}", set(&self.to, f)));
            }
        }
        let proto = match self.protocol {
            Protocol::Tcp => Some("tcp"),
            Protocol::Udp => Some("udp"),
            Protocol::Icmp => Some("icmp"),
            Protocol::Icmpv6 => Some("ipv6-icmp"),
            Protocol::Any => None,
        };
        match (proto, self.ports.is_empty()) {
            (Some(p), false) => {
                let intervals: Vec<(u128, u128)> = self
                    .ports
                    .iter()
                    .map(|r| (u128::from(r.from), u128::from(r.to)))
                    .collect();
                let ports = braced(
                    merged(&intervals)
                        .into_iter()
                        .map(|(a, b)| {
                            if a == b {
                                a.to_string()
                            } else {
                                format!("{a}-{b}")
                            }
                        })
                        .collect(),
                );
                parts.push(format!("{p} dport {ports}"));
            }
            (Some(p), true) => parts.push(format!("meta l4proto {p}")),
            (None, _) => {}
        }
        // nft prints a reject of one address family with its ICMP type.
        parts.push(match (self.action, family) {
            (Verdict::Reject, Some("ip")) => "reject with icmp port-unreachable".to_owned(),
            (Verdict::Reject, Some("ip6")) => "reject with icmpv6 port-unreachable".to_owned(),
            (action, _) => action.nft().to_owned(),
        });
        if let Some(c) = &self.comment {
            parts.push(format!("comment \"{c}\""));
        }
        parts.join(" ")
    }
}

/// One element, or an anonymous set of several.
fn braced(items: Vec<String>) -> String {
    if items.len() == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

/// Sorted, non-overlapping intervals merged the way nft merges them: a set with a
/// range in it is an interval set, whose adjacent elements become one (`{ 22, 23,
/// 49, 50-87 }` lists as `{ 22-23, 49-87 }`); a set of single values stays as
/// written (`{ 22, 23 }`).
fn merged(intervals: &[(u128, u128)]) -> Vec<(u128, u128)> {
    if intervals.iter().all(|(a, b)| a == b) {
        return intervals.to_vec();
    }
    let mut out: Vec<(u128, u128)> = Vec::new();
    for &(start, end) in intervals {
        match out.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(start) => last.1 = end,
            _ => out.push((start, end)),
        }
    }
    out
}

/// An address interval as nft prints it: an address, a network, or `a-b`.
fn address_interval(start: u128, end: u128, v4: bool) -> String {
    let addr = |bits: u128| -> IpAddr {
        if v4 {
            IpAddr::V4(std::net::Ipv4Addr::from(
                u32::try_from(bits).unwrap_or(u32::MAX),
            ))
        } else {
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
    };
    if start == end {
        return addr(start).to_string();
    }
    let size = end - start;
    let max: u32 = if v4 { 32 } else { 128 };
    // A whole network: the size is a power of two and the start is aligned.
    if size.checked_add(1).is_none_or(u128::is_power_of_two) {
        let host_bits = size.checked_add(1).map_or(128, u128::trailing_zeros);
        if start
            .checked_shr(host_bits)
            .unwrap_or(0)
            .checked_shl(host_bits)
            .unwrap_or(0)
            == start
        {
            return format!("{}/{}", addr(start), max - host_bits);
        }
    }
    format!("{}-{}", addr(start), addr(end))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(spec: Value) -> Vec<String> {
        Firewall::parse(&spec)
            .unwrap_err()
            .0
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn the_issue_example_renders_an_owned_table() {
        let fw = Firewall::parse(&json!({"default": "drop", "rules": [{"action":
            "accept", "protocol": "tcp", "ports": "22,443", "from": "10.0.0.0/8", "comment":
            "ssh"}]}))
        .unwrap();
        let text = fw.render("web-fw");
        assert_eq!(
            text,
            "table inet lattice {\n\
             \tcomment \"Managed by Lattice (intent web-fw); hand edits show as drift\"\n\
             \tchain input {\n\
             \t\ttype filter hook input priority filter; policy drop;\n\
             \t\tiifname \"lo\" accept\n\
             \t\tct state established,related accept\n\
             \t\tct state invalid drop\n\
             \t\tip saddr 10.0.0.0/8 tcp dport { 22, 443 } accept comment \"ssh\"\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn rules_render_per_address_family() {
        let fw = Firewall::parse(&json!({"default": "accept", "rules": [
            {"action": "drop", "from": ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]},
            {"action": "accept", "protocol": "udp", "ports": "51820", "interface": "wg*"},
            {"action": "reject", "protocol": "tcp", "ports": "8000-8100,25", "to": "2001:db8::1"},
            {"action": "accept", "protocol": "icmpv6"}
        ]}))
        .unwrap();
        let text = fw.render("x");
        assert!(text.contains("policy accept;"), "{text}");
        assert!(
            text.contains("\t\tip saddr { 192.0.2.0/24, 198.51.100.7 } drop\n"),
            "{text}"
        );
        assert!(
            text.contains("\t\tip6 saddr 2001:db8::/32 drop\n"),
            "{text}"
        );
        assert!(
            text.contains("\t\tiifname \"wg*\" udp dport 51820 accept\n"),
            "{text}"
        );
        assert!(
            text.contains("\t\tip6 daddr 2001:db8::1 tcp dport { 25, 8000-8100 } reject with icmpv6 port-unreachable\n"),
            "{text}"
        );
        assert!(
            text.contains("\t\tmeta l4proto ipv6-icmp accept\n"),
            "{text}"
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        assert_eq!(
            fields(json!({"default": "reject", "rules": [
                {"action": "allow", "protocol": "tcp", "ports": "0,22"},
                {"action": "accept", "protocol": "icmp", "ports": "22"},
                {"action": "accept", "from": "10.0.0.1/8", "to": ["2001:db8::/33", 5]},
                {"action": "accept", "interface": "this-name-is-too-long", "comment": "a \"quote\""},
                {"action": "accept", "port": 22},
                "not a rule"
            ]})),
            vec![
                "spec.default",
                "spec.rules[0].action",
                "spec.rules[0].ports",
                "spec.rules[1].ports",
                "spec.rules[2].from",
                "spec.rules[2].to[1]",
                "spec.rules[3].interface",
                "spec.rules[3].comment",
                "spec.rules[4].port",
                "spec.rules[5]",
            ]
        );
        assert_eq!(
            fields(
                json!({"rules": [{"action": "accept", "protocol": "icmp", "from": "2001:db8::/32"}]})
            ),
            vec!["spec.rules[0].protocol"]
        );
        assert_eq!(
            fields(
                json!({"rules": [{"action": "accept", "from": "10.0.0.0/8", "to": "2001:db8::/32"}]})
            ),
            vec!["spec.rules[0].to"]
        );
        assert_eq!(
            fields(json!({"rules": [{"action": "accept", "protocol": "tcp", "ports": "9-3"}]})),
            vec!["spec.rules[0].ports"]
        );
        assert_eq!(fields(json!([])), vec!["spec"]);
    }

    #[test]
    fn networks_are_canonical() {
        assert_eq!(
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8
            }
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.1.0.0/8").unwrap_err().contains("host bits"));
        assert!(Cidr::parse("::/0").is_ok());
        assert!(Cidr::parse("fe80::1/64").is_err());
        assert!(Cidr::parse("example.com").is_err());
    }
}
