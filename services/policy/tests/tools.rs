//! The DNS and proxy renderers against the real tools the agent validates with:
//! every rendered zone passes `named-checkzone`, every rendered HAProxy
//! configuration passes `haproxy -c`. Random specs, fixed seeds.

use std::path::{Path, PathBuf};
use std::process::Command;

use lattice_policy::changes::{Base, Intent};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

/// The tool's path (`/usr/sbin` is not on every user's PATH); in CI it must exist.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    assert!(
        found.is_some() || std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {name} is missing (scripts/test.sh installs it)"
    );
    found
}

fn intent(kind: &str, spec: Value) -> Intent {
    Intent::parse(&json!({"name": "t", "kind": kind, "selector": {"node": "n1"}, "spec": spec}))
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

fn random_zone(rng: &mut StdRng) -> Value {
    let mut records = vec![
        json!({"name": "@", "type": "NS", "value": "ns1"}),
        json!({"name": "ns1", "type": "A", "value": "192.0.2.53"}),
        json!({"name": "@", "type": "NS", "value": "ns.example.net."}),
    ];
    for i in 0..rng.random_range(1..40) {
        let name = pick(
            rng,
            &["@", "www", "api", "*.dev", "_sip._tcp", "mail", "a.b.c"],
        );
        let host = format!("h{i}");
        let r = match rng.random_range(0..8) {
            0 => json!({"name": host, "type": "A", "value": format!("198.51.100.{}", i % 250 + 1)}),
            1 => {
                json!({"name": host, "type": "AAAA", "value": format!("2001:db8::{:x}", i + 1), "ttl": 300})
            }
            2 => {
                json!({"name": format!("alias{i}"), "type": "CNAME", "value": pick(rng, &["www", "@", "target.example.org."])})
            }
            3 => {
                json!({"name": name, "type": "MX", "priority": rng.random_range(0..100), "value": format!("mx{i}.example.net.")})
            }
            4 => {
                json!({"name": name, "type": "TXT", "value": format!("{i} {}", "v=spf1 \"q\" \\ -all ".repeat(rng.random_range(1..30)))})
            }
            5 => {
                json!({"name": format!("_s{i}._tcp"), "type": "SRV", "priority": 10, "weight": i, "port": 443, "value": "www"})
            }
            6 => {
                json!({"name": name, "type": "CAA", "flags": pick(rng, &["0", "128"]).parse::<u8>().unwrap(), "tag": pick(rng, &["issue", "issuewild", "iodef"]), "value": format!("ca{i}.example")})
            }
            _ => json!({"name": host, "type": "NS", "value": "ns.example.net."}),
        };
        records.push(r);
    }
    json!({"zone": "example.com", "ttl": rng.random_range(60..86_400),
        "soa": {"mname": "ns1.example.com.", "rname": "hostmaster@example.com", "refresh": 3600},
        "records": records})
}

#[test]
fn rendered_zones_pass_named_checkzone() {
    let Some(check) = tool("named-checkzone") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let mut base = Base::absent();
    for round in 0..30 {
        let spec = random_zone(&mut rng);
        let zone = intent("dns", spec.clone()).render(&base);
        let file = dir.path().join("example.com.zone");
        std::fs::write(&file, &zone).unwrap();
        let out = Command::new(&check)
            .arg("example.com")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "round {round}: named-checkzone refused\n{}\n{zone}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Each change bumps the serial over the node's.
        let next = intent("dns", spec).render(&Base::of(&zone));
        assert_eq!(next, zone, "round {round}: unchanged zone, same bytes");
        base = Base::of(&zone);
    }
}

fn cert(dir: &Path) -> PathBuf {
    let c = rcgen::generate_simple_self_signed(vec!["app.example.com".into()]).unwrap();
    let path = dir.join("app.pem");
    std::fs::write(
        &path,
        format!("{}{}", c.cert.pem(), c.signing_key.serialize_pem()),
    )
    .unwrap();
    path
}

fn random_proxy(rng: &mut StdRng, certs: &str) -> Value {
    let mut routes = Vec::new();
    let hosts = [
        "app.example.com",
        "api.example.com",
        "git.example.com",
        "status.example.com",
    ];
    for (i, host) in hosts.iter().enumerate() {
        let tls = if *host == "git.example.com" {
            pick(rng, &["passthrough", "none"])
        } else {
            pick(rng, &["none", "terminate"])
        };
        for path in [None, Some("/api"), Some("/api/v2")]
            .into_iter()
            .take(rng.random_range(1..4))
        {
            let path = if tls == "passthrough" { None } else { path };
            let mut r = json!({"host": host, "tls": tls,
                "upstreams": (0..rng.random_range(1..4)).map(|j| match j {
                    0 => format!("10.0.{i}.{}:8080", j + 1),
                    1 => format!("[2001:db8::{i}{j}]:8443"),
                    _ => format!("localhost:{}", 8000 + i),
                }).collect::<Vec<_>>()});
            if let Some(p) = path {
                r["path"] = json!(p);
            }
            if rng.random_bool(0.5) {
                r["health"] = if tls == "passthrough" {
                    json!({"interval_s": 3})
                } else {
                    json!({"path": "/healthz", "interval_s": rng.random_range(1..30)})
                };
            }
            routes.push(r);
            if tls == "passthrough" {
                break;
            }
        }
    }
    json!({"listen": {"address": pick(rng, &["0.0.0.0", "127.0.0.1", "::"]), "http": 18080, "https": 18443},
        "certificates": certs, "routes": routes})
}

#[test]
fn rendered_proxy_configurations_pass_haproxy_check() {
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = cert(dir.path());
    let mut rng = StdRng::seed_from_u64(3);
    for round in 0..20 {
        let cfg = intent(
            "proxy",
            random_proxy(&mut rng, &certs.display().to_string()),
        )
        .render(&Base::absent());
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, &cfg).unwrap();
        let out = Command::new(&haproxy)
            .arg("-c")
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "round {round}: haproxy -c refused\n{text}\n{cfg}"
        );
        // The only warning allowed: a made-up upstream name that does not resolve
        // here (it starts down rather than failing the load).
        let warned = text
            .lines()
            .any(|l| l.contains("[WARNING]") && !l.contains("could not resolve address"));
        assert!(!warned, "round {round}: haproxy warned\n{text}\n{cfg}");
    }
}
