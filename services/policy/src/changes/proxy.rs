//! The `proxy` intent: the node's reverse proxy ("proxy-core"), hosts and paths to
//! upstreams with health checks, TLS terminated at the proxy or passed through by
//! SNI. Validated field by field, then rendered by a [`Renderer`]: HAProxy today
//! ([`HaProxy`]); Caddy or nginx can follow behind the same interface.
//!
//! ```json
//! {"listen": {"address": "0.0.0.0", "http": 80, "https": 443},
//!  "certificates": "/etc/haproxy/certs",
//!  "routes": [
//!   {"host": "app.example.com", "path": "/api", "tls": "terminate",
//!    "upstreams": ["10.0.0.5:8080", "10.0.0.6:8080"],
//!    "health": {"path": "/healthz", "interval_s": 5}},
//!   {"host": "git.example.com", "tls": "passthrough", "upstreams": ["10.0.0.7:443"]},
//!   {"host": "status.example.com", "upstreams": ["127.0.0.1:9000"]}
//! ]}
//! ```
//!
//! The longest path of a host wins; a `terminate` route answers plain HTTP with a
//! redirect to HTTPS.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::dns::zone_name;
use super::firewall::unknown_fields;
use super::{Problem, Problems};

/// Most routes in one intent.
pub const MAX_ROUTES: usize = 1_000;

/// Most upstreams per route.
pub const MAX_UPSTREAMS: usize = 64;

/// How a route treats TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain HTTP only.
    None,
    /// HTTPS ends at the proxy (certificates from `certificates`); HTTP redirects.
    Terminate,
    /// TLS goes through untouched to the upstream, routed by SNI.
    Passthrough,
}

/// An upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// IP address or host name.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// An active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// HTTP path to GET (None: a TCP connect).
    pub path: Option<String>,
    /// Seconds between checks.
    pub interval_s: u64,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The host name it answers for (lower case).
    pub host: String,
    /// Path prefix (None: every path).
    pub path: Option<String>,
    /// TLS handling.
    pub tls: Tls,
    /// Where it sends requests, balanced round robin.
    pub upstreams: Vec<Upstream>,
    /// Health checks (None: none).
    pub health: Option<Health>,
}

/// A validated proxy spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Address the proxy binds.
    pub address: IpAddr,
    /// Plain HTTP port.
    pub http: u16,
    /// HTTPS / TLS port.
    pub https: u16,
    /// Certificate directory or PEM file for terminated routes.
    pub certificates: Option<String>,
    /// Routes, in the order given.
    pub routes: Vec<Route>,
}

/// Renders a validated proxy spec for one reverse proxy.
pub trait Renderer {
    /// The configuration file's content.
    fn render(&self, proxy: &Proxy, intent: &str) -> String;
}

/// A path: absolute, printable, no spaces, quotes or backslashes.
fn path(v: &Value, field: &str, problems: &mut Problems) -> Option<String> {
    let s = v.as_str().unwrap_or_default();
    let ok = s.starts_with('/')
        && s.len() <= 1024
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '\'' | '#'));
    if ok {
        Some(s.to_owned())
    } else {
        problems.push(Problem::new(
            field,
            format!("{s:?} is not a path (starts with /, printable ASCII without spaces, quotes, # or backslashes)"),
        ));
        None
    }
}

fn upstream(v: &Value, field: &str, problems: &mut Problems) -> Option<Upstream> {
    let s = v.as_str().unwrap_or_default();
    let parsed = s.rsplit_once(':').and_then(|(h, p)| {
        let port = p.parse::<u16>().ok().filter(|p| *p > 0)?;
        let host = if let Some(v6) = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().ok()?.to_string()
        } else if h.parse::<std::net::Ipv4Addr>().is_ok() {
            h.to_owned()
        } else {
            zone_name(h).ok()?
        };
        Some(Upstream { host, port })
    });
    if parsed.is_none() {
        problems.push(Problem::new(
            field,
            format!(
                "{s:?} is not host:port (10.0.0.5:8080, [2001:db8::5]:8080 or app.internal:8080)"
            ),
        ));
    }
    parsed
}

fn port(m: &Map<String, Value>, key: &str, default: u16, problems: &mut Problems) -> u16 {
    match m.get(key) {
        None => default,
        Some(v) => match v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        {
            Some(p) => p,
            None => {
                problems.push(Problem::new(
                    &format!("spec.listen.{key}"),
                    "a port 1-65535",
                ));
                default
            }
        },
    }
}

fn route(v: &Value, at: &str, problems: &mut Problems) -> Option<Route> {
    let Some(m) = v.as_object() else {
        problems.push(Problem::new(at, "an object {\"host\", \"upstreams\", ...}"));
        return None;
    };
    let before = problems.0.len();
    unknown_fields(
        m,
        at,
        &["host", "path", "tls", "upstreams", "health"],
        problems,
    );
    let host = match m.get("host").and_then(Value::as_str).map(zone_name) {
        Some(Ok(h)) => Some(h),
        _ => {
            problems.push(Problem::new(
                &format!("{at}.host"),
                "required: a host name such as app.example.com",
            ));
            None
        }
    };
    let tls = match m.get("tls").map(|v| v.as_str()) {
        None | Some(Some("none")) => Tls::None,
        Some(Some("terminate")) => Tls::Terminate,
        Some(Some("passthrough")) => Tls::Passthrough,
        Some(_) => {
            problems.push(Problem::new(
                &format!("{at}.tls"),
                "one of none, terminate, passthrough",
            ));
            Tls::None
        }
    };
    let p = m
        .get("path")
        .and_then(|v| path(v, &format!("{at}.path"), problems));
    if p.is_some() && tls == Tls::Passthrough {
        problems.push(Problem::new(
            &format!("{at}.path"),
            "a passthrough route sees no paths (TLS is not opened): route by host only",
        ));
    }
    let mut upstreams = Vec::new();
    match m.get("upstreams").and_then(Value::as_array) {
        Some(us) if !us.is_empty() && us.len() <= MAX_UPSTREAMS => {
            for (i, u) in us.iter().enumerate() {
                upstreams.extend(upstream(u, &format!("{at}.upstreams[{i}]"), problems));
            }
        }
        _ => problems.push(Problem::new(
            &format!("{at}.upstreams"),
            format!("required: 1-{MAX_UPSTREAMS} of host:port"),
        )),
    }
    let health = match m.get("health") {
        None => None,
        Some(Value::Object(h)) => {
            unknown_fields(
                h,
                &format!("{at}.health"),
                &["path", "interval_s"],
                problems,
            );
            let hp = h
                .get("path")
                .and_then(|v| path(v, &format!("{at}.health.path"), problems));
            if hp.is_some() && tls == Tls::Passthrough {
                problems.push(Problem::new(&format!("{at}.health.path"), "a passthrough route's upstreams speak TLS: its health check is a TCP connect (leave path out)"));
            }
            let interval_s = match h.get("interval_s") {
                None => 5,
                Some(v) => v
                    .as_u64()
                    .filter(|s| (1..=3600).contains(s))
                    .unwrap_or_else(|| {
                        problems.push(Problem::new(
                            &format!("{at}.health.interval_s"),
                            "1-3600 seconds",
                        ));
                        5
                    }),
            };
            Some(Health {
                path: hp,
                interval_s,
            })
        }
        Some(_) => {
            problems.push(Problem::new(
                &format!("{at}.health"),
                "an object {\"path\", \"interval_s\"}",
            ));
            None
        }
    };
    if problems.0.len() > before {
        return None;
    }
    Some(Route {
        host: host?,
        path: p,
        tls,
        upstreams,
        health,
    })
}

impl Proxy {
    /// Validate `spec` (the intent's `spec`), naming every bad field.
    pub fn parse(spec: &Value) -> Result<Self, Problems> {
        let mut problems = Problems::default();
        let Some(m) = spec.as_object() else {
            problems.push(Problem::new(
                "spec",
                "an object {\"listen\", \"certificates\", \"routes\"}",
            ));
            return Err(problems);
        };
        unknown_fields(
            m,
            "spec",
            &["listen", "certificates", "routes"],
            &mut problems,
        );
        let empty = Map::new();
        let listen = match m.get("listen") {
            None => &empty,
            Some(Value::Object(l)) => l,
            Some(_) => {
                problems.push(Problem::new(
                    "spec.listen",
                    "an object {\"address\", \"http\", \"https\"}",
                ));
                &empty
            }
        };
        unknown_fields(
            listen,
            "spec.listen",
            &["address", "http", "https"],
            &mut problems,
        );
        let address = match listen.get("address") {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(v) => v.as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
                problems.push(Problem::new(
                    "spec.listen.address",
                    "an IPv4 or IPv6 address",
                ));
                IpAddr::from([0, 0, 0, 0])
            }),
        };
        let http = port(listen, "http", 80, &mut problems);
        let https = port(listen, "https", 443, &mut problems);
        if http == https {
            problems.push(Problem::new(
                "spec.listen.https",
                "must differ from listen.http",
            ));
        }
        let certificates = match m.get("certificates") {
            None => None,
            Some(v) => {
                let s = v.as_str().unwrap_or_default();
                if s.starts_with('/')
                    && s.len() <= 1024
                    && s.chars()
                        .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '\'' | '#'))
                {
                    Some(s.to_owned())
                } else {
                    problems.push(Problem::new("spec.certificates", "an absolute path to a PEM file or a directory of them, without spaces or quotes"));
                    None
                }
            }
        };
        let mut routes = Vec::new();
        match m.get("routes").and_then(Value::as_array) {
            Some(rs) if !rs.is_empty() && rs.len() <= MAX_ROUTES => {
                let mut seen = BTreeSet::new();
                for (i, r) in rs.iter().enumerate() {
                    let at = format!("spec.routes[{i}]");
                    if let Some(r) = route(r, &at, &mut problems) {
                        let https_side = r.tls != Tls::None;
                        if !seen.insert((r.host.clone(), r.path.clone(), https_side)) {
                            problems.push(Problem::new(
                                &at,
                                format!(
                                    "{}{} is routed twice",
                                    r.host,
                                    r.path.as_deref().unwrap_or("")
                                ),
                            ));
                        }
                        routes.push(r);
                    }
                }
            }
            _ => problems.push(Problem::new(
                "spec.routes",
                format!("required: 1-{MAX_ROUTES} routes"),
            )),
        }
        // A host is either passed through or not: SNI routing cannot split it by path.
        for (i, r) in routes.iter().enumerate() {
            if r.tls == Tls::Passthrough
                && routes
                    .iter()
                    .any(|o| o.host == r.host && o.tls == Tls::Terminate)
            {
                problems.push(Problem::new(
                    &format!("spec.routes[{i}].tls"),
                    format!("{} is both passed through and terminated: pick one", r.host),
                ));
            }
        }
        if certificates.is_none()
            && routes.iter().any(|r| r.tls == Tls::Terminate)
            && !problems.0.iter().any(|p| p.field == "spec.certificates")
        {
            problems.push(Problem::new(
                "spec.certificates",
                "required when a route terminates TLS: the PEM file or directory of certificates",
            ));
        }
        if problems.is_empty() {
            Ok(Self {
                address,
                http,
                https,
                certificates,
                routes,
            })
        } else {
            Err(problems)
        }
    }
}

/// The HAProxy adapter.
#[derive(Debug, Clone, Copy, Default)]
pub struct HaProxy;

fn bind(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn server(u: &Upstream) -> String {
    if u.host.contains(':') {
        format!("[{}]:{}", u.host, u.port)
    } else {
        format!("{}:{}", u.host, u.port)
    }
}

impl HaProxy {
    /// Routes in matching order: per host, the longest path first.
    fn ordered(routes: &[Route]) -> Vec<(usize, &Route)> {
        let mut v: Vec<(usize, &Route)> = routes.iter().enumerate().collect();
        v.sort_by(|(ia, a), (ib, b)| {
            let la = a.path.as_ref().map_or(0, String::len);
            let lb = b.path.as_ref().map_or(0, String::len);
            lb.cmp(&la).then(ia.cmp(ib))
        });
        v
    }

    fn http_rules(out: &mut String, routes: &[(usize, &Route)]) {
        for (i, r) in routes {
            let cond = match &r.path {
                Some(p) => format!(
                    "{{ req.hdr(host),field(1,:),lower -m str {} }} {{ path_beg {p} }}",
                    r.host
                ),
                None => format!("{{ req.hdr(host),field(1,:),lower -m str {} }}", r.host),
            };
            let _ = writeln!(out, "\tuse_backend route{i} if {cond}");
        }
    }
}

impl Renderer for HaProxy {
    fn render(&self, p: &Proxy, intent: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Rendered by Lattice from intent {intent}: edits on the node show as drift."
        );
        out.push_str("global\n\tlog /dev/log local0\n\n");
        out.push_str("defaults\n\tlog global\n\tmode http\n\toption dontlognull\n\ttimeout connect 5s\n\ttimeout client 60s\n\ttimeout server 60s\n\ttimeout http-request 10s\n\ttimeout tunnel 1h\n\t# An upstream name that does not resolve yet starts down instead of failing the load.\n\tdefault-server init-addr last,libc,none\n\n");
        let ordered = Self::ordered(&p.routes);
        let plain: Vec<(usize, &Route)> = ordered
            .iter()
            .filter(|(_, r)| r.tls == Tls::None)
            .copied()
            .collect();
        let terminated: Vec<(usize, &Route)> = ordered
            .iter()
            .filter(|(_, r)| r.tls == Tls::Terminate)
            .copied()
            .collect();
        let passed: Vec<(usize, &Route)> = ordered
            .iter()
            .filter(|(_, r)| r.tls == Tls::Passthrough)
            .copied()
            .collect();
        // Plain HTTP: routes without TLS, and redirects for terminated hosts.
        let _ = writeln!(
            out,
            "frontend http\n\tbind {}\n\tmode http\n\toption httplog\n\toption forwardfor",
            bind(p.address, p.http)
        );
        let redirect: BTreeSet<&str> = terminated.iter().map(|(_, r)| r.host.as_str()).collect();
        for host in &redirect {
            let _ = writeln!(
                out,
                "\thttp-request redirect scheme https code 301 if {{ req.hdr(host),field(1,:),lower -m str {host} }}"
            );
        }
        Self::http_rules(&mut out, &plain);
        out.push('\n');
        let certs = p.certificates.as_deref().unwrap_or("");
        if !passed.is_empty() {
            // One TLS port for both: SNI picks passthrough routes, the rest goes to
            // the terminating frontend over an abstract socket with PROXY v2.
            let _ = writeln!(
                out,
                "frontend tls\n\tbind {}\n\tmode tcp\n\toption tcplog\n\ttcp-request inspect-delay 5s\n\ttcp-request content accept if {{ req.ssl_hello_type 1 }}",
                bind(p.address, p.https)
            );
            for (i, r) in &passed {
                let _ = writeln!(
                    out,
                    "\tuse_backend route{i} if {{ req.ssl_sni -i {} }}",
                    r.host
                );
            }
            if !terminated.is_empty() {
                out.push_str("\tdefault_backend terminate\n\nbackend terminate\n\tmode tcp\n\tserver https abns@lattice-https send-proxy-v2\n");
            }
            out.push('\n');
            if !terminated.is_empty() {
                let _ = writeln!(
                    out,
                    "frontend https\n\tbind abns@lattice-https accept-proxy ssl crt {certs}\n\tmode http\n\toption httplog\n\toption forwardfor"
                );
                Self::http_rules(&mut out, &terminated);
                out.push('\n');
            }
        } else if !terminated.is_empty() {
            let _ = writeln!(
                out,
                "frontend https\n\tbind {} ssl crt {certs}\n\tmode http\n\toption httplog\n\toption forwardfor",
                bind(p.address, p.https)
            );
            Self::http_rules(&mut out, &terminated);
            out.push('\n');
        }
        for (i, r) in p.routes.iter().enumerate() {
            let mode = if r.tls == Tls::Passthrough {
                "tcp"
            } else {
                "http"
            };
            let _ = writeln!(
                out,
                "backend route{i}\n\t# {}{} ({})",
                r.host,
                r.path.as_deref().unwrap_or(""),
                match r.tls {
                    Tls::None => "http",
                    Tls::Terminate => "tls terminated",
                    Tls::Passthrough => "tls passthrough",
                }
            );
            let _ = writeln!(out, "\tmode {mode}\n\tbalance roundrobin");
            let check = match &r.health {
                None => String::new(),
                Some(h) => {
                    if let Some(path) = &h.path {
                        let _ = writeln!(
                            out,
                            "\toption httpchk\n\thttp-check send meth GET uri {path} ver HTTP/1.1 hdr host {}\n\thttp-check expect status 200-399",
                            r.host
                        );
                    }
                    format!(" check inter {}s", h.interval_s)
                }
            };
            for (j, u) in r.upstreams.iter().enumerate() {
                let _ = writeln!(out, "\tserver s{j} {}{check}", server(u));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn example() -> Value {
        json!({"listen": {"address": "127.0.0.1", "http": 8080, "https": 8443},
        "certificates": "/etc/haproxy/certs",
        "routes": [
            {"host": "app.example.com", "tls": "terminate", "upstreams": ["10.0.0.5:8080"]},
            {"host": "App.example.com", "path": "/api", "tls": "terminate",
             "upstreams": ["10.0.0.5:8080", "[2001:db8::6]:8080"], "health": {"path": "/healthz", "interval_s": 2}},
            {"host": "git.example.com", "tls": "passthrough", "upstreams": ["git.internal:443"], "health": {}},
            {"host": "status.example.com", "upstreams": ["127.0.0.1:9000"]}
        ]})
    }

    #[test]
    fn the_example_renders_for_haproxy() {
        let p = Proxy::parse(&example()).unwrap();
        let cfg = HaProxy.render(&p, "edge");
        assert!(cfg.contains("bind 127.0.0.1:8080\n"), "{cfg}");
        assert!(cfg.contains("http-request redirect scheme https code 301 if { req.hdr(host),field(1,:),lower -m str app.example.com }"), "{cfg}");
        // The longest path first.
        let api = cfg.find("use_backend route1 ").unwrap();
        let root = cfg.find("use_backend route0 ").unwrap();
        assert!(api < root, "{cfg}");
        assert!(
            cfg.contains("use_backend route2 if { req.ssl_sni -i git.example.com }"),
            "{cfg}"
        );
        assert!(
            cfg.contains("bind abns@lattice-https accept-proxy ssl crt /etc/haproxy/certs"),
            "{cfg}"
        );
        assert!(
            cfg.contains("server s1 [2001:db8::6]:8080 check inter 2s"),
            "{cfg}"
        );
        assert!(
            cfg.contains("server s0 git.internal:443 check inter 5s"),
            "{cfg}"
        );
        assert_eq!(
            cfg,
            HaProxy.render(&Proxy::parse(&example()).unwrap(), "edge")
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let err = Proxy::parse(&json!({"listen": {"http": 0, "https": "x", "address": "nope"},
            "routes": [
                {"host": "a b", "upstreams": []},
                {"host": "x.example.com", "path": "api", "tls": "mtls", "upstreams": ["10.0.0.1"], "health": {"interval_s": 0}},
                {"host": "y.example.com", "path": "/a", "tls": "passthrough", "upstreams": ["10.0.0.1:443"]},
                {"host": "z.example.com", "tls": "terminate", "upstreams": ["10.0.0.1:80"]},
                {"host": "z.example.com", "tls": "terminate", "upstreams": ["10.0.0.1:80"]}
            ]}))
        .unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.listen.address",
                "spec.listen.http",
                "spec.listen.https",
                "spec.routes[0].host",
                "spec.routes[0].upstreams",
                "spec.routes[1].tls",
                "spec.routes[1].path",
                "spec.routes[1].upstreams[0]",
                "spec.routes[1].health.interval_s",
                "spec.routes[2].path",
                "spec.routes[4]",
                "spec.certificates",
            ],
            "{err}"
        );
    }
}
