//! Decision latency with many policies: the index against Cedar's own `Authorizer`
//! over the whole set, side by side on the same policies and questions.
//!
//! `cargo run --release -p lattice-policy --example bench_authorize -- [POLICIES] [QUESTIONS]`
//! (defaults 10000 and 20000; the unindexed side asks 1 in 50 of the questions, it is
//! that much slower). Prints a Markdown table of p50, p99 and mean per decision.
//! `BENCH_OPAQUE=1` adds a clause to every policy that only Cedar can evaluate;
//! `BENCH_INDEXED_ONLY=1` skips the unindexed side.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lattice_policy::engine::{Action, Engine, Principal, Protocol, Query, Resource};
use lattice_policy::model::{PolicyDoc, compile};

/// A small deterministic generator (no dependency for a benchmark).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const USERS: u64 = 5_000;
const NODES: u64 = 2_000;
const GROUPS: u64 = 50;
const PORTS: [u16; 5] = [22, 80, 443, 8080, 9090];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];

fn policy(i: usize, r: &mut Rng) -> (PolicyDoc, Vec<cedar_policy::Policy>) {
    let (u, n, g) = (r.below(USERS), r.below(NODES), r.below(GROUPS));
    let port = PORTS[r.below(5) as usize];
    let env = ENVS[r.below(3) as usize];
    let text = match r.below(100) {
        // Mostly per-user and per-node permits.
        0..=59 => format!(
            r#"permit(principal == Lattice::User::"u{u}", action == Lattice::Action::"AccessNode", resource == Lattice::Node::"n{n}") when {{ context.port == {port} }};"#
        ),
        60..=79 => format!(
            r#"permit(principal == Lattice::User::"u{u}", action == Lattice::Action::"RunTask", resource == Lattice::Node::"n{n}") when {{ context.kind == "facts.refresh" }};"#
        ),
        // Some group and label policies.
        80..=89 => format!(
            r#"permit(principal in Lattice::Group::"g{g}", action == Lattice::Action::"AccessNode", resource == Lattice::Node::"n{n}");"#
        ),
        90..=94 => format!(
            r#"permit(principal in Lattice::Group::"g{g}", action == Lattice::Action::"AccessNode", resource) when {{ resource.hasTag("env") && resource.getTag("env") == "{env}" && context.port == {port} }};"#
        ),
        // Some forbids.
        _ => format!(
            r#"forbid(principal == Lattice::User::"u{u}", action, resource) when {{ resource.hasTag("env") && resource.getTag("env") == "prod" }};"#
        ),
    };
    // BENCH_OPAQUE: give every statement an `unless` clause (never true) that the
    // guards leave to Cedar, so each statement in scope whose guards hold is
    // evaluated by Cedar: the cost when conditions are more than comparisons.
    let text = if std::env::var_os("BENCH_OPAQUE").is_some() {
        format!(
            "{} unless {{ context has kind && context.kind == \"reboot\" }};",
            text.trim_end_matches(';')
        )
    } else {
        text
    };
    let name = format!("p{i}");
    let statements = compile(&name, &text).expect("generated policies validate");
    (
        PolicyDoc {
            name,
            text,
            enabled: true,
            priority: 0,
            description: String::new(),
            expires_at_ms: None,
        },
        statements,
    )
}

fn question(r: &mut Rng) -> Query {
    let (u, n) = (r.below(USERS), r.below(NODES));
    let groups = (0..r.below(3))
        .map(|_| format!("g{}", r.below(GROUPS)))
        .collect();
    let action = if r.below(4) == 0 {
        Action::RunTask {
            kind: "facts.refresh".into(),
        }
    } else {
        Action::AccessNode {
            port: PORTS[r.below(5) as usize],
            protocol: Protocol::Http,
        }
    };
    Query {
        principal: Principal::User {
            name: format!("u{u}"),
            org: "org-1".into(),
            groups,
        },
        action,
        resource: Resource::Node {
            id: format!("n{n}"),
            name: format!("node-{n}"),
            org: "org-1".into(),
            labels: BTreeMap::from([("env".to_owned(), ENVS[(n % 3) as usize].to_owned())]),
        },
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn row(name: &str, mut samples: Vec<Duration>) -> String {
    if samples.is_empty() {
        return format!("| {name} | 0 | - | - | - |");
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    format!(
        "| {name} | {} | {:.1} µs | {:.1} µs | {:.1} µs |",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6,
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let policies: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let questions: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let engine = Engine::new((0..policies).map(|i| policy(i, &mut r)));
    let built = started.elapsed();
    let qs: Vec<Query> = (0..questions).map(|_| question(&mut r)).collect();
    let whole = engine.live_set(0);
    let (mut fast, mut slow, mut allowed, mut disagree) = (Vec::new(), Vec::new(), 0, 0);
    let mut considered = 0usize;
    // Warm up both paths.
    for q in qs.iter().take(200) {
        std::hint::black_box(engine.decide(q, 0));
    }
    // The two sides one after the other on the same questions: interleaved, every
    // unindexed decision (which walks all 10,000 policies) would leave the caches
    // cold for the indexed one after it.
    let mut answers = Vec::with_capacity(qs.len());
    for q in &qs {
        let t = Instant::now();
        let d = std::hint::black_box(engine.decide(q, 0));
        fast.push(t.elapsed());
        allowed += usize::from(d.allow);
        considered += d.considered.len();
        answers.push(d);
    }
    if std::env::var_os("BENCH_INDEXED_ONLY").is_none() {
        for (q, d) in qs.iter().zip(&answers).step_by(50) {
            let t = Instant::now();
            let u = std::hint::black_box(engine.decide_unindexed(&whole, q));
            slow.push(t.elapsed());
            disagree += usize::from(u.allow != d.allow || u.determining != d.determining);
        }
    }
    println!(
        "{policies} policies ({} statements), indexed in {:.0} ms; {questions} questions, {allowed} allowed, {:.1} policies in scope per question (indexed); the two answers disagreed {disagree} times\n",
        engine.len(),
        built.as_secs_f64() * 1e3,
        considered as f64 / questions as f64
    );
    if std::env::var_os("BENCH_PARTS").is_some() {
        // Where the time goes: the same questions from a user in no group about a node
        // nothing names (the index finds nothing: no Cedar call).
        let mut none = Vec::new();
        for q in &qs {
            let mut q = q.clone();
            q.principal = Principal::User {
                name: "nobody".into(),
                org: "org-1".into(),
                groups: Vec::new(),
            };
            q.resource = Resource::Node {
                id: "zzz".into(),
                name: "zzz".into(),
                org: "org-1".into(),
                labels: BTreeMap::new(),
            };
            let t = Instant::now();
            std::hint::black_box(engine.decide(&q, 0));
            none.push(t.elapsed());
        }
        println!("{}", row("index only (no candidate)", none));
    }
    println!("| decision | questions | p50 | p99 | mean |");
    println!("|---|---:|---:|---:|---:|");
    println!("{}", row("indexed (lattice-policy)", fast.clone()));
    println!(
        "{}",
        row("unindexed (Cedar Authorizer, whole set)", slow.clone())
    );
    fast.sort();
    slow.sort();
    if slow.is_empty() {
        return;
    }
    println!(
        "\np50 unindexed / indexed: {:.0}x",
        percentile(&slow, 0.5).as_secs_f64() / percentile(&fast, 0.5).as_secs_f64()
    );
}
