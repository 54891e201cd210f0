//! The decision steps of a payment, each on its own: signature check, request parsing
//! and validation, a query's parsing and authentication and its answer's rendering,
//! the order state machine, routing, snapshot encoding, QR rendering, and a registry
//! lookup + actor round trip. Target: each decision step under 5 µs.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use paygate::http::api::{order_view, pay_spec, PayLimits};
use paygate::http::envelope::success;
use paygate::http::params;
use paygate::sandbox::{Sandbox, SandboxConnector};
use paygate::storage::codec::{decode_order, encode_order};
use paygate::storage::{Storage, StorageOptions};
use paygate_actors::channel::{ChannelDirectory, ChannelHandle, ChannelProfile, ChannelStatus};
use paygate_actors::channel_selection::{rank_channels, ChannelState};
use paygate_actors::clock::Clock;
use paygate_actors::clock::SystemClock;
use paygate_actors::ids::{PayOrderNo, ShardId};
use paygate_actors::merchant::{check_request, AuthPolicy, MerchantProfile, MerchantStatus};
use paygate_actors::money::{Currency, Money};
use paygate_actors::order::{ChannelNotice, Order, OrderCommand, OrderEvent, OrderSpec, PayMethod, QueryPolicy};
use paygate_actors::order_actor::{OrderContext, OrderRequest, Passivation, PaySubmission};
use paygate_actors::order_router::OrderRouter;
use paygate_actors::registry::{OrderTarget, Registry};
use paygate_actors::shard::ShardSupervisor;
use paygate_actors::signing::{self, SignType};
use paygate_actors::strategy::{Route, Strategy};

const SECRET: &str = "demo-secret-change-me-0123456789";

fn merchant() -> MerchantProfile {
    MerchantProfile {
        merchant_id: "M20240101001".into(),
        name: "bench".into(),
        secret: SECRET.into(),
        legacy_md5: false,
        status: MerchantStatus::Active,
        expire_minutes: 30,
        notify_url: None,
        allow_private_notify: false,
        rate_limit: None,
        routing: Default::default(),
    }
}

fn signed_pay(now_secs: i64) -> BTreeMap<String, String> {
    let mut p: BTreeMap<String, String> = [
        ("merchant_id", "M20240101001"),
        ("order_no", "ORD20240101123456"),
        ("amount", "100.00"),
        ("currency", "CNY"),
        ("subject", "商品描述"),
        ("body", "商品详情"),
        ("notify_url", "https://merchant.example/notify"),
        ("return_url", "https://merchant.example/return"),
        ("pay_method", "SANDBOX"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    p.insert("timestamp".into(), now_secs.to_string());
    let s = signing::sign(&p, SECRET, SignType::HmacSha256);
    p.insert("sign".into(), s);
    p
}

fn order() -> Order {
    let spec = OrderSpec {
        body: Some("green tea, 250 g".into()),
        notify_url: Some("https://merchant.example/notify".into()),
        client_ip: Some("203.0.113.7".into()),
        user_id: Some("u-42".into()),
        ..OrderSpec::new("M20240101001", "ORD1", Money::from_minor(10_000, Currency::CNY), "tea", PayMethod::Sandbox)
    };
    let id = PayOrderNo::parse("P170406720000000010000").unwrap();
    let mut o = Order::from_created(&OrderEvent::created(id, spec, "sandbox".into(), 1_000, 1_800_000)).unwrap();
    let accepted = o
        .handle(
            OrderCommand::Accept {
                code_url: "http://127.0.0.1:8080/sandbox/pay/P170406720000000010000".into(),
                channel_trade_no: Some("SBX1".into()),
            },
            2_000,
        )
        .unwrap();
    for e in &accepted {
        o.apply(e).unwrap();
    }
    o
}

fn decisions(c: &mut Criterion) {
    let now = SystemClock.now_ms() / 1000;
    let params = signed_pay(now);
    let profile = merchant();
    let policy = AuthPolicy::default();
    c.bench_function("signature_verify_hmac_sha256", |b| {
        b.iter(|| check_request(black_box(&profile), black_box(&params), now, &policy))
    });

    let body = serde_json::to_vec(&params).unwrap();
    let limits = PayLimits { max_amounts: HashMap::from([(Currency::CNY, 10_000_000_000)]), max_expire_minutes: 1440 };
    c.bench_function("request_parse_and_validate_pay", |b| {
        b.iter(|| {
            let p = params::parse(black_box(&body)).unwrap();
            pay_spec(&limits, &p, &profile).unwrap()
        })
    });

    let mut query: BTreeMap<String, String> =
        [("merchant_id", "M20240101001"), ("pay_order_no", "P170406720000000010000")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    query.insert("timestamp".into(), now.to_string());
    query.insert("nonce".into(), "a1b2c3d4e5f6".into());
    let sign = signing::sign(&query, SECRET, SignType::HmacSha256);
    query.insert("sign".into(), sign);
    let query_body = serde_json::to_vec(&query).unwrap();
    c.bench_function("query_parse_and_authenticate", |b| {
        b.iter(|| {
            let p = params::parse(black_box(&query_body)).unwrap();
            check_request(&profile, &p, now, &policy).unwrap();
            p
        })
    });

    let o = order();
    c.bench_function("query_answer_render", |b| {
        b.iter(|| success(&order_view(black_box("http://127.0.0.1:8080"), black_box(&o))))
    });

    let paid = OrderCommand::Notice(ChannelNotice::Paid { channel_trade_no: "SBX1".into(), amount_minor: 10_000 });
    c.bench_function("order_transition_paid", |b| {
        b.iter(|| {
            let mut next = black_box(&o).clone();
            for e in next.handle(paid.clone(), 3_000).unwrap() {
                next.apply(&e).unwrap();
            }
            next
        })
    });

    let channels: Vec<Arc<ChannelProfile>> = (0..50)
        .map(|i| {
            Arc::new(ChannelProfile {
                code: format!("ch{i}"),
                provider: "sandbox".into(),
                methods: if i % 2 == 0 {
                    vec![PayMethod::Sandbox, PayMethod::Alipay]
                } else {
                    vec![PayMethod::WechatPay]
                },
                currencies: vec![Currency::CNY],
                weight: 10 + i,
                status: ChannelStatus::Enabled,
                single_limit_minor: Some(5_000_000),
                daily_limit_minor: None,
                fee_rate: rust_decimal::Decimal::ZERO,
                timeout: Duration::from_secs(3),
            })
        })
        .collect();
    let amount = Money::from_minor(10_000, Currency::CNY);
    // Every channel up and healthy, as the channel actors would publish them.
    struct AllUp;
    impl ChannelState for AllUp {
        fn has_room(&self, _: &ChannelProfile, _: Money) -> bool {
            true
        }
        fn is_up(&self, _: &ChannelProfile) -> bool {
            true
        }
        fn weight(&self, c: &ChannelProfile) -> u32 {
            c.weight
        }
        fn health(&self, c: &ChannelProfile) -> (f64, u64, u32) {
            (1.0 - f64::from(c.weight % 7) / 100.0, u64::from(c.weight) * 10, 100)
        }
    }
    for strategy in Strategy::ALL {
        c.bench_function(&format!("routing_50_channels_{}", strategy.as_str()), |b| {
            b.iter(|| {
                rank_channels(black_box(&channels), PayMethod::Sandbox, amount, strategy, 0.42, &AllUp).map(|c| c.len())
            })
        });
    }

    let bytes = encode_order(&o).unwrap();
    c.bench_function("snapshot_encode", |b| b.iter(|| encode_order(black_box(&o)).unwrap()));
    c.bench_function("snapshot_decode", |b| b.iter(|| decode_order(black_box(&bytes)).unwrap()));

    let url = o.code_url.clone().unwrap_or_default();
    c.bench_function("qr_png_data_uri", |b| b.iter(|| paygate::qr::png_data_uri(black_box(&url)).unwrap()));
}

/// A registry lookup and a message round trip to a live order actor (a query), with a
/// real journal and views underneath.
fn actor_round_trip(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&StorageOptions {
        data_dir: dir.path().to_path_buf(),
        segment_bytes: 64 << 20,
        max_batch: 1024,
        queue: 65_536,
        cache_bytes: 64 << 20,
        reserve_bytes: 0,
        accept_data_loss: false,
        query_policy: QueryPolicy::default(),
    })
    .unwrap();
    let system = actix::System::new();
    let (router, target) = system.block_on(async {
        let store = paygate::sim::store::SimStore::in_memory().unwrap();
        let sandbox =
            Arc::new(Sandbox::new("bench-notify-secret-0123456789".into(), Default::default(), &store).unwrap());
        let profile = ChannelProfile {
            code: "sandbox".into(),
            provider: "sandbox".into(),
            methods: vec![PayMethod::Sandbox],
            currencies: vec![Currency::CNY],
            weight: 1,
            status: ChannelStatus::Enabled,
            single_limit_minor: None,
            daily_limit_minor: None,
            fee_rate: rust_decimal::Decimal::ZERO,
            timeout: Duration::from_secs(3),
        };
        let oc = Arc::new(OrderContext {
            journal: Arc::new(storage.journal.clone()),
            store: storage.views.clone(),
            channels: ChannelDirectory::new(vec![ChannelHandle::start(
                profile,
                Default::default(),
                Arc::new(SandboxConnector(sandbox)),
                Default::default(),
                Arc::new(SystemClock),
            )]),
            clock: Arc::new(SystemClock),
            registry: Arc::new(Registry::default()),
            query_policy: QueryPolicy::default(),
            passivation: Passivation { idle: Duration::from_secs(3600), final_idle: Duration::from_secs(3600) },
            notifier: Default::default(),
            failover_budget: Duration::from_secs(10),
            risk: Default::default(),
        });
        let shards = (0..4).map(|n| actix::Actor::start(ShardSupervisor::new(ShardId(n), oc.clone()))).collect();
        let router = OrderRouter::new(oc, shards);
        let mut spec = order().spec;
        spec.order_no = "RT-1".into();
        let sub = PaySubmission {
            spec,
            route: Ok(Route { candidates: vec!["sandbox".into()], ..Route::default() }),
            expire_after_ms: 1_800_000,
            buyer_account: None,
        };
        let created = router
            .dispatch(
                OrderTarget::Key { merchant_id: "M20240101001".into(), order_no: "RT-1".into() },
                OrderRequest::Pay(Box::new(sub)),
                None,
            )
            .await
            .unwrap();
        (router, OrderTarget::Id(created.pay_order_no))
    });
    c.bench_function("registry_lookup_and_actor_round_trip", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(router.dispatch(target.clone(), OrderRequest::Query, None).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    c.bench_function("registry_lookup", |b| {
        let registry = router.context().registry.clone();
        b.iter(|| registry.lookup(black_box(&target)).is_some())
    });
}

/// The same allocator as the `paygate` binary, so figures match the node.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

criterion_group!(benches, decisions, actor_round_trip);
criterion_main!(benches);
