//! The store-backed limiters (issue 9): `RedisStore`, `PostgresStore` and `SqliteStore` as
//! `keygate::limits::Limiter`s.
//!
//! - Exactness across nodes: two gates (two store instances, as two app servers) on one
//!   Redis and on one PostgreSQL (SQLite: one gate) admit exactly the burst of 2,000
//!   concurrent requests, none a microsecond before the emission interval, then exactly
//!   one; and exactly as many of 10,000 concurrent uses as the key has credits, leaving a
//!   stored count of 0.
//! - Refills at the exact instant, with a `ManualClock`.
//! - The same answers as the in-process `MemoryLimiter` over random sequences (both run
//!   `keygate::limits::gcra`; this checks each store's script or statement does), and the
//!   public `keygate::testing::limiter_conformance` suite.
//! - A failing limiter store is answered per the failure mode: 503 by default.
//! - `LocalFirst` over Redis and PostgreSQL: two nodes overshoot by one burst, then the
//!   store records both batches (the one above the burst too) and both nodes converge.
//!
//! Redis tests work in a random namespace, PostgreSQL tests in a schema of their own, so
//! concurrent runs never share state.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg(feature = "testing")]

use crate::support;

use std::sync::Arc;

use chrono::{TimeDelta, TimeZone, Utc};
use keygate::http::AuthError;
use keygate::limits::{
    Charge, CreditPolicy, CreditRefill, CreditSpend, FailureMode, LimitCheck, Limiter,
    MemoryLimiter, RateLimit, Subject,
};
use keygate::{
    Clock, KeyId, KeyStore, Keygate, ManualClock, MemoryStore, NewKey, Pepper, VerifyError,
};

fn pepper() -> Pepper {
    Pepper::new(1, [9u8; 32]).unwrap()
}

fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap()
}

/// One app server: a gate over `keys` that keeps its limits in `limiter`, on `clock`.
fn node(keys: Arc<dyn KeyStore>, limiter: Arc<dyn Limiter>, clock: &Arc<ManualClock>) -> Keygate {
    Keygate::builder(keys, pepper())
        .prefix("lim")
        .clock(Arc::clone(clock))
        .limiter(limiter)
        .build()
        .unwrap()
}

/// How `n` concurrent verifies of `token`, spread over `gates` in turn, came out:
/// `(accepted, rate limited, credits exhausted)`. Anything else fails the test.
async fn flood(gates: &[Keygate], token: &str, n: usize) -> (usize, usize, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let gate = gates[i % gates.len()].clone();
        let token = token.to_owned();
        tasks.spawn(async move { gate.verify(&token).await });
    }
    let (mut ok, mut limited, mut exhausted) = (0, 0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => ok += 1,
            Err(VerifyError::RateLimited(_)) => limited += 1,
            Err(VerifyError::CreditsExhausted(_)) => exhausted += 1,
            Err(other) => panic!("unexpected refusal: {other:?}"),
        }
    }
    (ok, limited, exhausted)
}

/// `LocalFirst` over a store limiter: two nodes (`limiters`: two instances on one backend)
/// each spend a whole burst before syncing (the documented `(N - 1)·B` overshoot), then
/// converge on the store's state: the second batch, above the burst, is *recorded* (not
/// refused) by the store's own script or statement, and both nodes wait the debt out.
async fn local_first_converges(limiters: &[Arc<dyn Limiter>]) {
    use keygate::limits::{LocalFirst, LocalFirstConfig};
    let nodes: Vec<_> = limiters
        .iter()
        .map(|l| LocalFirst::new(Arc::clone(l), LocalFirstConfig::new()))
        .collect();
    let limit = RateLimit::new("requests", 10, 60_000); // T = 6 s, B = 10
    let one = [Charge::new(&limit, 1)];
    let key = KeyId::random();
    let t0 = start().timestamp_micros();
    let check = |now| LimitCheck::new(Subject::Key(key), &one, None, now);
    for node in &nodes {
        for i in 0..10 {
            let out = node.check_now(&check(t0)).unwrap().unwrap();
            assert!(out.allowed, "{i}");
        }
    }
    for node in [&nodes[0], &nodes[1], &nodes[0]] {
        node.sync().await.unwrap();
    }
    for node in &nodes {
        assert!(!node.check_now(&check(t0)).unwrap().unwrap().allowed);
    }
    // The store holds all 20 units: 120 s of the rate from t0.
    let peek = [Charge::new(&limit, 0)];
    let stored = limiters[0]
        .check(&LimitCheck::new(Subject::Key(key), &peek, None, t0))
        .await
        .unwrap();
    assert_eq!(stored.limits[0].remaining, 0);
    assert_eq!(stored.limits[0].reset_after_us, 120_000_000);
    // The debt (60 s beyond the burst) plus one interval: exactly one more.
    let later = t0 + 66_000_000;
    assert!(
        !nodes[0]
            .check_now(&check(later - 1))
            .unwrap()
            .unwrap()
            .allowed
    );
    assert!(nodes[0].check_now(&check(later)).unwrap().unwrap().allowed);
    assert!(!nodes[0].check_now(&check(later)).unwrap().unwrap().allowed);
    nodes[0].shutdown().await.unwrap();
    let stored = limiters[1]
        .check(&LimitCheck::new(Subject::Key(key), &peek, None, later))
        .await
        .unwrap();
    assert_eq!(stored.limits[0].reset_after_us, 60_000_000);
}

/// The rate-limit proof on `gates` (which share one backend): 2,000 concurrent requests
/// against 100 per minute, burst 100 -> exactly 100; 1 µs before the emission interval
/// (600 ms) has passed -> none; at it -> exactly one.
async fn rate_exactness(gates: &[Keygate], clock: &ManualClock) {
    let issued = gates[0]
        .mint(NewKey::new("exact", "owner-1").ratelimits([RateLimit::new("requests", 100, 60_000)]))
        .await
        .unwrap();
    let token = issued.key.expose().to_owned();
    assert_eq!(flood(gates, &token, 2_000).await, (100, 1_900, 0));
    clock.advance(TimeDelta::microseconds(599_999));
    assert_eq!(flood(gates, &token, 200).await, (0, 200, 0));
    clock.advance(TimeDelta::microseconds(1));
    assert_eq!(flood(gates, &token, 200).await, (1, 199, 0));
}

/// The credit proof: 10,000 concurrent uses of a key with 5,000 credits -> exactly 5,000,
/// and the count each limiter reads afterwards is 0. Returns the key id.
async fn credit_exactness(
    gates: &[Keygate],
    limiters: &[Arc<dyn Limiter>],
    clock: &ManualClock,
) -> KeyId {
    let policy = CreditPolicy::new(5_000);
    let issued = gates[0]
        .mint(NewKey::new("credits", "owner-2").credits(policy.clone()))
        .await
        .unwrap();
    let token = issued.key.expose().to_owned();
    assert_eq!(flood(gates, &token, 10_000).await, (5_000, 0, 5_000));
    let record = gates[0].get(issued.record.id).await.unwrap().unwrap();
    let stored = record.credits.clone().unwrap();
    for limiter in limiters {
        let now = clock.now_micros();
        assert_eq!(
            limiter
                .credits(issued.record.id, &stored, now)
                .await
                .unwrap(),
            0
        );
    }
    issued.record.id
}

/// Credits refill at the exact instant (midnight UTC for a daily refill), and a rate limit
/// frees one unit exactly one emission interval after it was spent.
async fn refill_edges(gate: &Keygate, clock: &ManualClock) {
    let policy = CreditPolicy::new(1).refill(CreditRefill::daily(3));
    let issued = gate
        .mint(NewKey::new("refill", "owner-3").credits(policy))
        .await
        .unwrap();
    let token = issued.key.expose().to_owned();
    gate.verify(&token).await.unwrap();
    assert!(matches!(
        gate.verify(&token).await,
        Err(VerifyError::CreditsExhausted(_))
    ));
    let midnight = Utc.with_ymd_and_hms(2026, 3, 11, 0, 0, 0).unwrap();
    clock.set(midnight - TimeDelta::microseconds(1));
    assert!(matches!(
        gate.verify(&token).await,
        Err(VerifyError::CreditsExhausted(_))
    ));
    clock.set(midnight);
    for _ in 0..3 {
        gate.verify(&token).await.unwrap();
    }
    assert!(matches!(
        gate.verify(&token).await,
        Err(VerifyError::CreditsExhausted(_))
    ));

    // 3 per second, burst 1: T = ceil(10^9 / 3) ns = 333,333,334 ns.
    let issued = gate
        .mint(
            NewKey::new("edge", "owner-3")
                .ratelimits([RateLimit::new("r", 3, 1_000).with_burst(1)]),
        )
        .await
        .unwrap();
    let token = issued.key.expose().to_owned();
    gate.verify(&token).await.unwrap();
    let t0 = clock.now();
    clock.set(t0 + TimeDelta::nanoseconds(333_333_000)); // 333,333 µs: 334 ns short
    assert!(matches!(
        gate.verify(&token).await,
        Err(VerifyError::RateLimited(_))
    ));
    clock.set(t0 + TimeDelta::microseconds(333_334)); // the first whole µs at or past T
    gate.verify(&token).await.unwrap();
    assert!(matches!(
        gate.verify(&token).await,
        Err(VerifyError::RateLimited(_))
    ));
}

/// A tiny deterministic generator (xorshift), so a failing sequence can be replayed.
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

/// `limiter` answers exactly as a `MemoryLimiter` over 400 random checks of a few
/// subjects: several limits at once, costs 0 to 4, credits with a daily refill and a
/// policy reset half way, time moving by random amounts (across midnight too), and every
/// fourth allowed check refunded.
async fn agrees_with_memory(limiter: &dyn Limiter, seed: u64) {
    let memory = MemoryLimiter::new();
    let mut rng = Rng(seed);
    let limits = [
        RateLimit::new("a", 3, 1_000),
        RateLimit::new("b", 10, 60_000).with_burst(4),
        RateLimit::new("c", 7, 1_000).with_burst(2),
    ];
    let mut policy = CreditPolicy::new(6).refill(CreditRefill::daily(5));
    policy.set_at = Some(start());
    let keys = [KeyId::random(), KeyId::random()];
    let owner = support::unique("agree-owner");
    let mut now = Utc
        .with_ymd_and_hms(2026, 3, 10, 23, 59, 50)
        .unwrap()
        .timestamp_micros();
    for step in 0..400 {
        now += i64::try_from(rng.below(400_000)).unwrap();
        if step == 200 {
            policy.set_at = Some(chrono::DateTime::from_timestamp_micros(now).unwrap());
            policy.remaining = 4;
        }
        let mut charges: Vec<Charge<'_>> = Vec::new();
        for limit in &limits {
            if rng.below(3) > 0 {
                charges.push(Charge::new(limit, rng.below(5)));
            }
        }
        let which = rng.below(3);
        let subject = match which {
            0 | 1 => Subject::Key(keys[usize::try_from(which).unwrap()]),
            _ => Subject::Owner(&owner),
        };
        let credits =
            matches!(subject, Subject::Key(_)).then(|| CreditSpend::new(&policy, rng.below(3)));
        let check = LimitCheck::new(subject, &charges, credits, now);
        let want = memory.check(&check).await.unwrap();
        let got = limiter.check(&check).await.unwrap();
        assert_eq!(got, want, "step {step} (seed {seed}): {check:?}");
        if got.allowed && rng.below(4) == 0 {
            memory.refund(&check).await.unwrap();
            limiter.refund(&check).await.unwrap();
        }
    }
    for key in keys {
        assert_eq!(
            limiter.credits(key, &policy, now).await.unwrap(),
            memory.credits(key, &policy, now).await.unwrap()
        );
    }
}

/// A limiter that fails: the gate answers 503 (fail closed, the default), or lets the
/// request through with fail open.
async fn failure_modes(broken: Arc<dyn Limiter>) {
    let clock = Arc::new(ManualClock::new(start()));
    let keys: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    let closed = node(Arc::clone(&keys), Arc::clone(&broken), &clock);
    let issued = closed
        .mint(NewKey::new("broken", "owner-4").ratelimits([RateLimit::new("r", 10, 1_000)]))
        .await
        .unwrap();
    let token = issued.key.expose().to_owned();
    let err = closed.verify(&token).await.unwrap_err();
    assert!(matches!(err, VerifyError::LimiterUnavailable(_)), "{err:?}");
    assert_eq!(err.reason(), "limiter_unavailable");
    let answer = AuthError::from(err);
    assert_eq!(answer.outcome().status, 503);
    assert!(answer.outcome().retry_after.is_some());

    let open = Keygate::builder(keys, pepper())
        .prefix("lim")
        .clock(Arc::clone(&clock))
        .limiter(broken)
        .limiter_failure(FailureMode::Open)
        .build()
        .unwrap();
    open.verify(&token).await.unwrap();
}

#[cfg(feature = "redis")]
mod redis_backend {
    use super::*;
    use keygate::redis::{self, Client};
    use keygate::{RedisConfig, RedisStore};

    /// A random namespace, removed at the end.
    struct Scratch {
        url: String,
        namespace: String,
    }

    impl Scratch {
        fn new() -> Self {
            Self {
                url: support::redis_url(),
                namespace: format!(
                    "keygate-limits-test:{}:",
                    KeyId::random().as_uuid().simple()
                ),
            }
        }

        async fn store(&self) -> RedisStore {
            // A flood of thousands of requests at once queues on each node's one
            // connection: generous timeouts, so only a wrong answer fails the test.
            let config = RedisConfig::new()
                .namespace(self.namespace.clone())
                .response_timeout(std::time::Duration::from_secs(60));
            RedisStore::connect_with(self.url.as_str(), config)
                .await
                .unwrap()
        }

        fn conn(&self) -> redis::Connection {
            Client::open(self.url.as_str())
                .unwrap()
                .get_connection()
                .unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let Ok(client) = Client::open(self.url.as_str()) else {
                return;
            };
            let Ok(mut conn) = client.get_connection() else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.namespace))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _ = redis::cmd("DEL").arg(keys).query::<()>(&mut conn);
            }
        }
    }

    async fn two_nodes(
        scratch: &Scratch,
        clock: &Arc<ManualClock>,
    ) -> (Vec<Keygate>, Vec<Arc<dyn Limiter>>) {
        let mut gates = Vec::new();
        let mut limiters: Vec<Arc<dyn Limiter>> = Vec::new();
        for _ in 0..2 {
            let store = scratch.store().await;
            let limiter: Arc<dyn Limiter> = Arc::new(store.clone());
            gates.push(node(Arc::new(store), Arc::clone(&limiter), clock));
            limiters.push(limiter);
        }
        (gates, limiters)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_redis),
        ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
    )]
    async fn redis_two_nodes_admit_exactly_the_burst_then_one_per_interval() {
        let scratch = Scratch::new();
        let clock = Arc::new(ManualClock::new(start()));
        let (gates, _) = two_nodes(&scratch, &clock).await;
        rate_exactness(&gates, &clock).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_redis),
        ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
    )]
    async fn redis_local_first_nodes_converge_on_the_store() {
        let scratch = Scratch::new();
        let clock = Arc::new(ManualClock::new(start()));
        let (_, limiters) = two_nodes(&scratch, &clock).await;
        local_first_converges(&limiters).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_redis),
        ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
    )]
    async fn redis_two_nodes_spend_exactly_the_credits() {
        let scratch = Scratch::new();
        let clock = Arc::new(ManualClock::new(start()));
        let (gates, limiters) = two_nodes(&scratch, &clock).await;
        let id = credit_exactness(&gates, &limiters, &clock).await;
        let stored: Option<String> = redis::cmd("HGET")
            .arg(format!("{}v1:usage:{{key:{id}}}:cr", scratch.namespace))
            .arg("remaining")
            .query(&mut scratch.conn())
            .unwrap();
        assert_eq!(stored.as_deref(), Some("0"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_redis),
        ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
    )]
    async fn redis_refills_at_the_exact_instant() {
        let scratch = Scratch::new();
        let clock = Arc::new(ManualClock::new(start()));
        let (gates, _) = two_nodes(&scratch, &clock).await;
        refill_edges(&gates[0], &clock).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_redis),
        ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
    )]
    async fn redis_limiter_agrees_with_the_memory_limiter() {
        let scratch = Scratch::new();
        let store = scratch.store().await;
        for seed in [1, 0x5eed, 0xdead_beef] {
            agrees_with_memory(&store, seed).await;
        }
        keygate::testing::limiter_conformance(&store).await;
    }

    /// The rate-limit hash expires (a minute after its last TAT) while the credit hash does
    /// not, and `forget` removes both. (That a subject's keys share a Cluster slot is a
    /// unit test next to the script: `CLUSTER KEYSLOT` needs a cluster-enabled server.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_redis),
        ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
    )]
    async fn redis_only_rate_state_expires_and_forget_removes_both() {
        let scratch = Scratch::new();
        let store = scratch.store().await;
        let limit = RateLimit::new("r", 10, 1_000);
        let charges = [Charge::new(&limit, 1)];
        let policy = CreditPolicy::new(5);
        let id = KeyId::random();
        let now = start().timestamp_micros();
        let out = store
            .check(&LimitCheck::new(
                Subject::Key(id),
                &charges,
                Some(CreditSpend::new(&policy, 1)),
                now,
            ))
            .await
            .unwrap();
        assert!(out.allowed);
        let mut conn = scratch.conn();
        let rl = format!("{}v1:usage:{{key:{id}}}:rl", scratch.namespace);
        let cr = format!("{}v1:usage:{{key:{id}}}:cr", scratch.namespace);
        let rl_ttl: i64 = redis::cmd("PTTL").arg(&rl).query(&mut conn).unwrap();
        let cr_ttl: i64 = redis::cmd("PTTL").arg(&cr).query(&mut conn).unwrap();
        assert!(rl_ttl > 60_000 && rl_ttl <= 60_100, "{rl_ttl}");
        assert_eq!(cr_ttl, -1);
        store.forget(Subject::Key(id)).await.unwrap();
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&rl)
            .arg(&cr)
            .query(&mut conn)
            .unwrap();
        assert_eq!(exists, 0);
    }

    /// State Redis cannot run the script on (a key of the wrong type) is a limiter
    /// failure: 503 by default, through with fail open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_redis),
        ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
    )]
    async fn redis_failure_is_answered_per_the_failure_mode() {
        let scratch = Scratch::new();
        let store = scratch.store().await;
        // Every key subject's rate-limit key would be a hash; make all of them strings by
        // pointing the limiter at a namespace whose keys we break as they are used.
        let broken = BrokenRedis {
            inner: store,
            conn: tokio::sync::Mutex::new(scratch.conn()),
            ns: scratch.namespace.clone(),
        };
        failure_modes(Arc::new(broken)).await;
    }

    /// Breaks a subject's rate-limit key (a string where a hash belongs) before each check.
    struct BrokenRedis {
        inner: RedisStore,
        conn: tokio::sync::Mutex<redis::Connection>,
        ns: String,
    }

    #[keygate::async_trait::async_trait]
    impl Limiter for BrokenRedis {
        async fn check(
            &self,
            check: &LimitCheck<'_>,
        ) -> Result<keygate::limits::LimitOutcome, keygate::limits::LimiterError> {
            let key = format!("{}v1:usage:{{{}}}:rl", self.ns, check.subject.storage_key());
            redis::cmd("SET")
                .arg(key)
                .arg("not a hash")
                .query::<()>(&mut *self.conn.lock().await)
                .unwrap();
            self.inner.check(check).await
        }

        async fn credits(
            &self,
            key: KeyId,
            policy: &CreditPolicy,
            now: i64,
        ) -> Result<u64, keygate::limits::LimiterError> {
            self.inner.credits(key, policy, now).await
        }

        async fn forget(&self, subject: Subject<'_>) -> Result<(), keygate::limits::LimiterError> {
            self.inner.forget(subject).await
        }
    }
}

#[cfg(feature = "postgres")]
mod postgres_backend {
    use super::*;
    use keygate::sqlx::{self, Connection};
    use keygate::{PostgresConfig, PostgresStore};

    /// A schema of this test's own (`search_path`), dropped at the end.
    struct Schema {
        name: String,
        url: String,
    }

    impl Schema {
        async fn new() -> Self {
            let base = support::postgres_url();
            let name = support::unique("kg_limits").replace('-', "_");
            let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
                .execute(&mut admin)
                .await
                .unwrap();
            let separator = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{separator}options=-csearch_path%3D{name}");
            Self { name, url }
        }

        async fn store(&self) -> PostgresStore {
            let config = PostgresConfig::new()
                .max_connections(8)
                .acquire_timeout(std::time::Duration::from_secs(120));
            PostgresStore::connect_with(&self.url, config)
                .await
                .unwrap()
        }

        async fn drop(self) {
            let mut admin = sqlx::PgConnection::connect(&support::postgres_url())
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA \"{}\" CASCADE",
                self.name
            )))
            .execute(&mut admin)
            .await
            .unwrap();
        }
    }

    async fn two_nodes(
        schema: &Schema,
        clock: &Arc<ManualClock>,
    ) -> (Vec<Keygate>, Vec<Arc<dyn Limiter>>, PostgresStore) {
        let mut gates = Vec::new();
        let mut limiters: Vec<Arc<dyn Limiter>> = Vec::new();
        let mut last = None;
        for _ in 0..2 {
            let store = schema.store().await;
            let limiter: Arc<dyn Limiter> = Arc::new(store.clone());
            gates.push(node(Arc::new(store.clone()), Arc::clone(&limiter), clock));
            limiters.push(limiter);
            last = Some(store);
        }
        (gates, limiters, last.unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_postgres),
        ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
    )]
    async fn postgres_two_nodes_admit_exactly_the_burst_then_one_per_interval() {
        let schema = Schema::new().await;
        let clock = Arc::new(ManualClock::new(start()));
        let (gates, _, _) = two_nodes(&schema, &clock).await;
        rate_exactness(&gates, &clock).await;
        drop(gates);
        schema.drop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_postgres),
        ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
    )]
    async fn postgres_local_first_nodes_converge_on_the_store() {
        let schema = Schema::new().await;
        let clock = Arc::new(ManualClock::new(start()));
        let (gates, limiters, _) = two_nodes(&schema, &clock).await;
        local_first_converges(&limiters).await;
        drop((gates, limiters));
        schema.drop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_postgres),
        ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
    )]
    async fn postgres_two_nodes_spend_exactly_the_credits() {
        let schema = Schema::new().await;
        let clock = Arc::new(ManualClock::new(start()));
        let (gates, limiters, store) = two_nodes(&schema, &clock).await;
        let id = credit_exactness(&gates, &limiters, &clock).await;
        let stored: Option<i64> =
            sqlx::query_scalar("SELECT credits FROM keygate_usage WHERE subject = $1")
                .bind(format!("key:{id}"))
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(stored, Some(0));
        drop((gates, limiters, store));
        schema.drop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_postgres),
        ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
    )]
    async fn postgres_refills_at_the_exact_instant_and_agrees_with_memory() {
        let schema = Schema::new().await;
        let clock = Arc::new(ManualClock::new(start()));
        let (gates, _, store) = two_nodes(&schema, &clock).await;
        refill_edges(&gates[0], &clock).await;
        for seed in [1, 0x5eed, 0xdead_beef] {
            agrees_with_memory(&store, seed).await;
        }
        keygate::testing::limiter_conformance(&store).await;
        drop((gates, store));
        schema.drop().await;
    }

    /// A pool whose server refuses connections: the limiter fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_failure_is_answered_per_the_failure_mode() {
        let (_socket, port) = support::closed_port();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(300))
            .connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/none"))
            .unwrap();
        failure_modes(Arc::new(PostgresStore::from_pool(pool))).await;
    }
}

#[cfg(feature = "sqlite")]
mod sqlite_backend {
    use super::*;
    use keygate::sqlx;
    use keygate::SqliteStore;

    struct File(std::path::PathBuf);

    impl Drop for File {
        fn drop(&mut self) {
            support::remove_sqlite(&self.0);
        }
    }

    async fn store() -> (SqliteStore, File) {
        let path = support::sqlite_temp_path();
        let store = SqliteStore::connect(path.to_str().unwrap()).await.unwrap();
        (store, File(path))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_admits_exactly_the_burst_then_one_per_interval() {
        let (store, _file) = store().await;
        let clock = Arc::new(ManualClock::new(start()));
        let gate = node(Arc::new(store.clone()), Arc::new(store), &clock);
        rate_exactness(&[gate], &clock).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_spends_exactly_the_credits() {
        let (store, _file) = store().await;
        let clock = Arc::new(ManualClock::new(start()));
        let limiter: Arc<dyn Limiter> = Arc::new(store.clone());
        let gate = node(Arc::new(store.clone()), Arc::clone(&limiter), &clock);
        let id = credit_exactness(&[gate], &[limiter], &clock).await;
        let stored: Option<i64> =
            sqlx::query_scalar("SELECT credits FROM keygate_usage WHERE subject = ?1")
                .bind(format!("key:{id}"))
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(stored, Some(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_refills_at_the_exact_instant_and_agrees_with_memory() {
        let (store, _file) = store().await;
        let clock = Arc::new(ManualClock::new(start()));
        let gate = node(Arc::new(store.clone()), Arc::new(store.clone()), &clock);
        refill_edges(&gate, &clock).await;
        for seed in [1, 0x5eed, 0xdead_beef] {
            agrees_with_memory(&store, seed).await;
        }
        keygate::testing::limiter_conformance(&store).await;
    }

    /// A closed pool: the limiter fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_failure_is_answered_per_the_failure_mode() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.pool().close().await;
        failure_modes(Arc::new(store)).await;
    }
}
