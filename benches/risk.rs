//! Risk evaluation with a million users' state loaded: criterion's mean, then the
//! latency percentiles of single evaluations, and the memory the state takes per key.
//! Run: `cargo bench --bench risk`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use paygate_actors::money::{Currency, Money};
use paygate_actors::risk::lists::{ListEntry, ListKind, ListName, Lists};
use paygate_actors::risk::rules::RiskRules;
use paygate_actors::risk::{Decision, Policy, RiskEngine, RiskInput};

const USERS: usize = 1_000_000;
const T0: i64 = 1_767_225_600_000;

/// The shipped rules (config/risk.toml), and a thousand list entries.
fn engine() -> RiskEngine {
    #[derive(serde::Deserialize)]
    struct File {
        risk: RiskRules,
    }
    let text = std::fs::read_to_string("config/risk.toml").expect("config/risk.toml");
    let rules = toml::from_str::<File>(&text).expect("risk.toml").risk;
    let entries = (0..1_000).map(|i| {
        let kind = if i % 2 == 0 { ListKind::UserId } else { ListKind::DeviceId };
        ListEntry { list: ListName::Block, kind, value: format!("blocked-{i}") }
    });
    RiskEngine::new(Policy::new(rules, Lists::new(entries), 0).expect("rules"))
}

fn names(i: usize) -> (String, String, std::net::IpAddr) {
    let ip = std::net::Ipv4Addr::from(0x2400_0000u32 + (i as u32 % 0x00ff_ffff));
    (format!("user-{i}"), format!("device-{}", i / 2), ip.into())
}

fn input<'a>(user: &'a str, device: &'a str, ip: std::net::IpAddr, minor: i64, now: i64) -> RiskInput<'a> {
    RiskInput {
        merchant_id: "M20240101001",
        amount: Money::from_minor(minor, Currency::CNY),
        user_id: Some(user),
        device_id: Some(device),
        client_ip: Some(ip),
        account: None,
        now_ms: now,
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn risk(c: &mut Criterion) {
    let e = engine();
    let before = rss_bytes();
    // A million users, each with two payments, half a million devices and as many
    // addresses: the state of a busy month.
    for i in 0..USERS {
        let (user, device, ip) = names(i);
        for k in 0..2 {
            e.replay(
                &input(&user, &device, ip, 1_000 + (i % 50) as i64 * 100, T0 + (i as i64) + k),
                Decision::Allow,
                true,
            );
        }
    }
    let keys = e.state().len();
    let grown = rss_bytes().saturating_sub(before);
    eprintln!(
        "risk state: {keys} keys ({USERS} users), {:.0} MiB, {:.0} bytes per key",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / keys as f64
    );

    let mut i = 0usize;
    let now = T0 + USERS as i64 + 60_000;
    c.bench_function("risk/assess_1m_users", |b| {
        b.iter(|| {
            i = (i + 7_919) % USERS;
            let (user, device, ip) = names(i);
            black_box(e.assess(&input(&user, &device, ip, 2_500, now)))
        })
    });

    // Percentiles of single evaluations (names made outside the timing), in five rounds:
    // on a shared machine one round's tail can be another tenant's; the median round is
    // the figure quoted, every round is shown.
    let mut rounds = Vec::new();
    for round in 0..5usize {
        let mut samples: Vec<u64> = Vec::with_capacity(100_000);
        for n in 0..100_000usize {
            let (user, device, ip) = names((round * 100_000 + n) * 104_729 % USERS);
            let started = Instant::now();
            black_box(e.assess(&input(&user, &device, ip, 2_500, now + (round * 100_000 + n) as i64)));
            samples.push(started.elapsed().as_nanos() as u64);
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
        eprintln!(
            "risk/assess_1m_users round {round}: p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs",
            at(0.5),
            at(0.99),
            at(0.999)
        );
        rounds.push((at(0.5), at(0.99), at(0.999)));
    }
    rounds.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (p50, p99, p999) = rounds[rounds.len() / 2];
    eprintln!(
        "risk/assess_1m_users single evaluations, median round: p50 {p50:.2} µs, p99 {p99:.2} µs, p99.9 {p999:.2} µs"
    );
}

// The node's allocator: the state's memory is laid out as it is in the node.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = risk
}
criterion_main!(benches);
