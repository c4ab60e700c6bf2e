//! The firewall renderer against the real `nft`, inside a network namespace this
//! test creates (`unshare -rn`: never the host's own tables): every rendered table
//! loads, and `nft list table inet lattice` prints it back byte for byte, so what
//! a node reports equals the plan's artifact until someone edits the node by hand.

use std::process::Command;

use lattice_policy::changes::Intent;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

/// Whether `nft` can run in a fresh network namespace here; in CI it must.
fn nft_available() -> bool {
    let ok = Command::new("unshare")
        .args(["-rn", "nft", "list", "ruleset"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but `unshare -rn nft` does not run (scripts/test.sh installs nftables)"
    );
    ok
}

/// Load `ruleset` into a new namespace and list the table back.
fn load_and_list(ruleset: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lattice.nft");
    std::fs::write(&file, ruleset).unwrap();
    let out = Command::new("unshare")
        .args([
            "-rn",
            "sh",
            "-c",
            "nft -f \"$1\" && nft list table inet lattice",
            "sh",
        ])
        .arg(&file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn intent(spec: Value) -> Intent {
    Intent::parse(
        &json!({"name": "fw", "kind": "firewall", "selector": {"node": "n1"}, "spec": spec}),
    )
    .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn random_rule(rng: &mut StdRng) -> Value {
    let v4 = ["10.0.0.0/8", "192.0.2.0/24", "198.51.100.7", "0.0.0.0/0"];
    let v6 = ["2001:db8::/32", "2001:db8:1::1", "::/0", "fd00::/8"];
    let mut rule = serde_json::Map::new();
    rule.insert(
        "action".into(),
        json!(["accept", "drop", "reject"][rng.random_range(0..3)]),
    );
    let proto = ["tcp", "udp", "icmp", "icmpv6", "any"][rng.random_range(0..5)];
    rule.insert("protocol".into(), json!(proto));
    if matches!(proto, "tcp" | "udp") && rng.random_bool(0.8) {
        let mut ports = Vec::new();
        let mut next = rng.random_range(1..100u16);
        for _ in 0..rng.random_range(1..4) {
            if rng.random_bool(0.3) {
                ports.push(format!("{next}-{}", next + rng.random_range(1..50)));
                next += 60;
            } else {
                ports.push(next.to_string());
                next += rng.random_range(1..30);
            }
        }
        rule.insert("ports".into(), json!(ports.join(",")));
    }
    // Networks of the rule's family (icmp: v4, icmpv6: v6, else either or both).
    let pick = |rng: &mut StdRng, from: &[&str]| from[rng.random_range(0..from.len())].to_owned();
    match (proto, rng.random_range(0..4)) {
        ("icmp", 1..) => {
            rule.insert("from".into(), json!(pick(rng, &v4)));
        }
        ("icmpv6", 1..) => {
            rule.insert("to".into(), json!(pick(rng, &v6)));
        }
        (_, 1) => {
            rule.insert(
                "from".into(),
                json!([pick(rng, &v4[..3]), pick(rng, &v6[..2])]),
            );
        }
        (_, 2) => {
            rule.insert("to".into(), json!(pick(rng, &v6)));
        }
        _ => {}
    }
    if rng.random_bool(0.3) {
        rule.insert(
            "interface".into(),
            json!(["eth0", "wg*", "ens3"][rng.random_range(0..3)]),
        );
    }
    if rng.random_bool(0.5) {
        rule.insert(
            "comment".into(),
            json!(format!("rule {}", rng.random_range(0..100))),
        );
    }
    Value::Object(rule)
}

#[test]
fn rendered_tables_load_and_list_back_byte_for_byte() {
    if !nft_available() {
        eprintln!("skipped here: `unshare -rn nft` is not available (CI requires it)");
        return;
    }
    let mut specs = vec![
        json!({"default": "drop", "rules": [{"action": "accept", "protocol": "tcp",
            "ports": "22,443", "from": "10.0.0.0/8", "comment": "ssh"}]}),
        json!({"default": "accept"}),
        json!({"default": "accept", "rules": [
            {"action": "drop", "from": ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]},
            {"action": "accept", "protocol": "udp", "ports": "51820", "interface": "wg*"},
            {"action": "reject", "protocol": "tcp", "ports": "8000-8100,25", "to": "2001:db8::1"},
            {"action": "reject", "protocol": "udp"},
            {"action": "accept", "protocol": "icmpv6"},
            {"action": "accept", "protocol": "icmp", "from": "0.0.0.0/0"}
        ]}),
        // Adjacent elements: nft merges them when one is a range.
        json!({"rules": [
            {"action": "drop", "from": ["10.0.0.0/25", "10.0.0.128/25"]},
            {"action": "drop", "from": ["10.0.0.0/24", "10.0.1.0/25"]},
            {"action": "drop", "from": ["10.0.0.1", "10.0.0.2", "10.0.0.3/32"]},
            {"action": "drop", "from": ["10.0.0.255", "10.0.1.0/24", "2001:db8::/33", "2001:db8:8000::/33"]},
            {"action": "accept", "protocol": "tcp", "ports": "22,23,49,50-87,88"},
            {"action": "accept", "protocol": "udp", "ports": "1-10,11-20"}
        ]}),
    ];
    let mut rng = StdRng::seed_from_u64(42);
    for _ in 0..40 {
        let rules: Vec<Value> = (0..rng.random_range(0..8))
            .map(|_| random_rule(&mut rng))
            .collect();
        let default = ["accept", "drop"][rng.random_range(0..2)];
        specs.push(json!({"default": default, "rules": rules}));
    }
    for spec in specs {
        let rendered = intent(spec.clone()).render(&lattice_policy::changes::Base::absent());
        let listed =
            load_and_list(&rendered).unwrap_or_else(|e| panic!("{spec}\n{rendered}\nnft: {e}"));
        assert_eq!(listed, rendered, "{spec}");
    }
}
