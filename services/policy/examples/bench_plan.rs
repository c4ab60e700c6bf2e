//! Rendering and diffing one firewall plan for many nodes (the reviewed-changes
//! issue's target: 1,000 nodes in at most 1 s): validate the intent, render the
//! table, diff it against each node's base (a third have no table, a third have
//! the previous version, a third were edited by hand) and hash the plan.
//!
//! `cargo run --release -p lattice-policy --example bench_plan -- [NODES] [RULES] [ROUNDS]`
//! (defaults 1000, 50, 5). Prints the median and the slowest round.

use std::time::{Duration, Instant};

use lattice_policy::changes::{Base, Intent, Kind, plan_hash, target};
use serde_json::{Value, json};

fn spec(rules: usize, shift: u16) -> Value {
    let rules: Vec<Value> = (0..rules)
        .map(|i| {
            let i = u16::try_from(i).unwrap_or(u16::MAX);
            json!({"action": if i % 7 == 0 { "drop" } else { "accept" },
                "protocol": if i % 3 == 0 { "udp" } else { "tcp" },
                "ports": format!("{},{}-{}", 1000 + i * 10 + shift, 20_000 + i * 10, 20_005 + i * 10),
                "from": [format!("10.{}.0.0/16", i % 250), format!("2001:db8:{:x}::/48", i)],
                "comment": format!("rule {i}")})
        })
        .collect();
    json!({"default": "drop", "rules": rules})
}

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rules: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let doc = |spec: Value| json!({"name": "fleet-fw", "kind": "firewall", "selector": {"labels": {"env": "prod"}}, "spec": spec});
    // The bases nodes report: none, the previous version, the previous one edited.
    let previous = Intent::parse(&doc(spec(rules, 1)))
        .unwrap()
        .render(&lattice_policy::changes::Base::absent());
    let edited = previous.replace("accept comment \"rule 1\"", "drop comment \"rule 1\"");
    let bases = [Base::absent(), Base::of(&previous), Base::of(&edited)];
    let new_doc = doc(spec(rules, 0));
    let mut times = Vec::new();
    let mut diff_bytes = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let intent = Intent::parse(&new_doc).expect("the benchmark's intent validates");
        let targets: Vec<_> = (0..nodes)
            .map(|n| target(&intent, &format!("node-{n:05}"), &bases[n % 3]))
            .collect();
        let hash = plan_hash(Kind::Firewall, &targets);
        times.push(started.elapsed());
        diff_bytes = targets.iter().map(|t| t.diff.len()).sum::<usize>();
        std::hint::black_box(hash);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{nodes} nodes, {rules} rules ({} bytes per table, {} bytes of diffs): median {:.1} ms, slowest {:.1} ms over {rounds} rounds",
        Intent::parse(&new_doc)
            .unwrap()
            .render(&lattice_policy::changes::Base::absent())
            .len(),
        diff_bytes,
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
    );
}
