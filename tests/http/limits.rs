//! The usage-limit rows of the HTTP mapping (issue 9), through axum (`oneshot`) and
//! actix-web (`init_service`) alike: 429 `rate_limited` with `Retry-After`, `RateLimit` and
//! `RateLimit-Policy`; 429 `credits_exhausted`; 503 when the limiter fails (closed); the
//! opt-in allowance headers on success; a handler's charge answered as 429; and the admin
//! API's Unkey-shaped fields with their authority rule.

// Test code: a panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
#![cfg(all(feature = "axum", feature = "actix"))]

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{TimeDelta, TimeZone, Utc};
use http_body_util::BodyExt;
use keygate::limits::{
    CreditPolicy, CreditRefill, LimitCheck, LimitOutcome, Limiter, LimiterError, RateLimit, Subject,
};
use keygate::{KeyId, Keygate, ManualClock, MemoryStore, NewKey, Pepper, Principal};
use serde_json::{json, Value};
use tower::ServiceExt;

const PEPPER: &[u8] = b"limits http test pepper, 32 bytes or more";

/// actix-web's test harness needs its own system (a Tokio current-thread runtime); axum's
/// `oneshot` runs on it as well.
fn run<F: std::future::Future>(f: F) -> F::Output {
    actix_web::rt::System::new().block_on(f)
}

/// What both frameworks answered: status, the headers that matter, the body.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn error(&self) -> String {
        let body: Value = serde_json::from_str(&self.body).unwrap();
        body["error"].as_str().unwrap().to_owned()
    }
}

const WATCHED: [&str; 5] = [
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "www-authenticate",
    "content-type",
];

fn gate(
    configure: impl FnOnce(keygate::KeygateBuilder) -> keygate::KeygateBuilder,
) -> (Keygate, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap(),
    ));
    let builder = Keygate::builder(MemoryStore::new(), Pepper::new(1, PEPPER).unwrap())
        .prefix("abs")
        .clock(clock.clone());
    (configure(builder).build().unwrap(), clock)
}

/// `/me` behind `Authenticate` with allowance headers, `/tokens` charging 600 of the
/// `tokens` limit after verify (the handler returns the charge's refusal with `?`).
fn axum_app(gate: &Keygate) -> axum::Router {
    use axum::routing::get;
    async fn me(principal: Principal) -> String {
        principal.owner_id().to_owned()
    }
    async fn tokens(
        axum::extract::State(gate): axum::extract::State<Keygate>,
        principal: Principal,
    ) -> Result<String, keygate::http::AuthError> {
        gate.charge(&principal, "tokens", 600).await?;
        Ok("generated".to_owned())
    }
    axum::Router::new()
        .route("/me", get(me))
        .route("/tokens", get(tokens))
        .layer(keygate::axum::Authenticate::required(gate.clone()).allowance_headers())
        .with_state(gate.clone())
}

async fn via_axum(gate: &Keygate, path: &str, key: &str) -> Answer {
    let request = axum::http::Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {key}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = axum_app(gate).oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = WATCHED
        .iter()
        .filter_map(|name| {
            response
                .headers()
                .get(*name)
                .map(|v| ((*name).to_owned(), v.to_str().unwrap().to_owned()))
        })
        .collect();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn via_actix(gate: &Keygate, path: &str, key: &str) -> Answer {
    use actix_web::{test, web, App};
    async fn me(principal: Principal) -> String {
        principal.owner_id().to_owned()
    }
    async fn tokens(
        gate: web::Data<Keygate>,
        principal: Principal,
    ) -> Result<String, keygate::http::AuthError> {
        gate.charge(&principal, "tokens", 600).await?;
        Ok("generated".to_owned())
    }
    let app = test::init_service(
        App::new().app_data(web::Data::new(gate.clone())).service(
            web::scope("")
                .wrap(keygate::actix::Authenticate::required(gate.clone()).allowance_headers())
                .route("/me", web::get().to(me))
                .route("/tokens", web::get().to(tokens)),
        ),
    )
    .await;
    let request = test::TestRequest::get()
        .uri(path)
        .insert_header(("authorization", format!("Bearer {key}")))
        .to_request();
    let response = test::call_service(&app, request).await;
    let status = response.status().as_u16();
    let headers = WATCHED
        .iter()
        .filter_map(|name| {
            response
                .headers()
                .get(*name)
                .map(|v| ((*name).to_owned(), v.to_str().unwrap().to_owned()))
        })
        .collect();
    let body = test::read_body(response).await;
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// The same request through both frameworks, on two gates in the same state (each
/// request spends from its own gate): both answers, which must be identical.
async fn both(axum_gate: &Keygate, actix_gate: &Keygate, path: &str, key: (&str, &str)) -> Answer {
    let a = via_axum(axum_gate, path, key.0).await;
    let b = via_actix(actix_gate, path, key.1).await;
    assert_eq!(a, b, "axum and actix answer alike");
    a
}

/// Two gates (one per framework) and a key minted alike on each.
async fn pair(new: impl Fn() -> NewKey) -> ((Keygate, Keygate), (String, String)) {
    let (a, _) = gate(|b| b);
    let (b, _) = gate(|b| b);
    let ka = a.mint(new()).await.unwrap().key.expose().to_owned();
    let kb = b.mint(new()).await.unwrap().key.expose().to_owned();
    ((a, b), (ka, kb))
}

#[test]
fn a_rate_limited_request_is_429_with_retry_after_and_ratelimit_headers() {
    run(async {
        let ((a, b), (ka, kb)) =
            pair(|| NewKey::new("k", "alice").ratelimits([RateLimit::new("requests", 2, 60_000)]))
                .await;
        let ok = both(&a, &b, "/me", (&ka, &kb)).await;
        assert_eq!(ok.status, 200);
        // Opt-in allowance headers on success.
        assert_eq!(
            ok.header("ratelimit-policy"),
            Some(r#""requests";q=2;w=60"#)
        );
        assert_eq!(ok.header("ratelimit"), Some(r#""requests";r=1;t=30"#));
        assert_eq!(both(&a, &b, "/me", (&ka, &kb)).await.status, 200);
        let refused = both(&a, &b, "/me", (&ka, &kb)).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.error(), "rate_limited");
        assert_eq!(refused.header("retry-after"), Some("30"));
        assert_eq!(
            refused.header("ratelimit-policy"),
            Some(r#""requests";q=2;w=60"#)
        );
        assert_eq!(refused.header("ratelimit"), Some(r#""requests";r=0;t=60"#));
        assert_eq!(
            refused.header("www-authenticate"),
            None,
            "never a 401 challenge"
        );
        assert_eq!(refused.header("content-type"), Some("application/json"));
    });
}

#[test]
fn exhausted_credits_are_429_with_their_own_code() {
    run(async {
        let ((a, b), (ka, kb)) = pair(|| {
            NewKey::new("k", "alice").credits(CreditPolicy::new(1).refill(CreditRefill::daily(10)))
        })
        .await;
        let ok = both(&a, &b, "/me", (&ka, &kb)).await;
        assert_eq!(ok.header("ratelimit"), Some(r#""credits";r=0"#));
        let refused = both(&a, &b, "/me", (&ka, &kb)).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.error(), "credits_exhausted");
        // Until midnight UTC: 12 hours.
        assert_eq!(refused.header("retry-after"), Some("43200"));
        assert_eq!(
            refused.header("ratelimit"),
            Some(r#""credits";r=0;t=43200"#)
        );
        // Without a refill there is nothing to wait for: no Retry-After.
        let ((a, b), (ka, kb)) =
            pair(|| NewKey::new("k", "alice").credits(CreditPolicy::new(0))).await;
        let refused = both(&a, &b, "/me", (&ka, &kb)).await;
        assert_eq!((refused.status, refused.header("retry-after")), (429, None));
    });
}

#[test]
fn a_handlers_charge_is_answered_as_429_by_both_frameworks() {
    run(async {
        let tokens = || {
            NewKey::new("k", "alice").ratelimits([RateLimit::new("tokens", 1000, 60_000).manual()])
        };
        let ((a, b), (ka, kb)) = pair(tokens).await;
        assert_eq!(both(&a, &b, "/tokens", (&ka, &kb)).await.status, 200);
        let refused = both(&a, &b, "/tokens", (&ka, &kb)).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.error(), "rate_limited");
        // 200 more tokens are needed: 200 × 60 ms = 12 s.
        assert_eq!(refused.header("retry-after"), Some("12"));
    });
}

struct DownLimiter;

#[async_trait]
impl Limiter for DownLimiter {
    async fn check(&self, _: &LimitCheck<'_>) -> Result<LimitOutcome, LimiterError> {
        Err(LimiterError::Timeout)
    }
    async fn credits(&self, _: KeyId, _: &CreditPolicy, _: i64) -> Result<u64, LimiterError> {
        Err(LimiterError::Timeout)
    }
    async fn forget(&self, _: Subject<'_>) -> Result<(), LimiterError> {
        Ok(())
    }
}

#[test]
fn a_failing_limiter_is_503_never_401_never_200() {
    run(async {
        let (a, _) = gate(|b| b.limiter(DownLimiter));
        let (b, _) = gate(|b| b.limiter(DownLimiter));
        let new = || NewKey::new("k", "alice").ratelimits([RateLimit::new("requests", 2, 60_000)]);
        let ka = a.mint(new()).await.unwrap().key.expose().to_owned();
        let kb = b.mint(new()).await.unwrap().key.expose().to_owned();
        let refused = both(&a, &b, "/me", (&ka, &kb)).await;
        assert_eq!(refused.status, 503);
        assert_eq!(refused.error(), "temporarily_unavailable");
        assert_eq!(refused.header("retry-after"), Some("5"));
    });
}

#[test]
fn the_admin_api_takes_and_shows_unkeys_shapes() {
    run(async {
        let (gate, clock) = gate(|b| b);
        let root = gate
            .mint(NewKey::new("root", "root").scopes(["admin"]))
            .await
            .unwrap();
        let app = keygate::axum::admin_routes::<()>(
            "/api/api-keys",
            keygate::admin::AdminApi::new(gate.clone()),
        );
        let call = |method: &str, path: String, body: Option<Value>, key: String| {
            let app = app.clone();
            let method = method.to_owned();
            async move {
                let mut request = axum::http::Request::builder()
                    .method(method.as_str())
                    .uri(path)
                    .header("authorization", format!("Bearer {key}"));
                if body.is_some() {
                    request = request.header("content-type", "application/json");
                }
                let body = body.map_or_else(axum::body::Body::empty, |b| {
                    axum::body::Body::from(b.to_string())
                });
                let response = app.oneshot(request.body(body).unwrap()).await.unwrap();
                let status = response.status().as_u16();
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                (
                    status,
                    serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
                )
            }
        };
        let root_key = root.key.expose().to_owned();
        let (status, created) = call(
        "POST",
        "/api/api-keys".into(),
        Some(json!({
            "name": "metered", "userId": "root", "scopes": ["admin"],
            "ratelimits": [{"name": "requests", "limit": 100, "duration": 60000, "autoApply": true}],
            "credits": {"remaining": 50, "refill": {"interval": "monthly", "amount": 50, "refillDay": 1}}
        })),
        root_key.clone(),
    )
    .await;
        assert_eq!(status, 200, "{created}");
        let view = &created["apiKey"];
        assert_eq!(
            view["ratelimits"],
            json!([{"name": "requests", "limit": 100, "duration": 60000, "autoApply": true}])
        );
        assert_eq!(view["credits"]["remaining"], 50);
        assert_eq!(
            view["credits"]["refill"],
            json!({"interval": "monthly", "amount": 50, "refillDay": 1})
        );
        let id = view["id"].as_str().unwrap().to_owned();
        let metered = view["apiKey"].as_str().unwrap().to_owned();
        // A use shows in the view: credits read from the limiter.
        gate.verify(&metered).await.unwrap();
        let (_, got) = call("GET", format!("/api/api-keys/{id}"), None, root_key.clone()).await;
        assert_eq!(got["apiKey"]["credits"]["remaining"], 49);
        // The metered key (itself admin) may not lift its own limits or top up its credits.
        clock.advance(TimeDelta::seconds(60));
        for body in [
            json!({"ratelimits": []}),
            json!({"ratelimits": null}),
            json!({"ratelimits": [{"name": "requests", "limit": 101, "duration": 60000}]}),
            json!({"credits": null}),
            json!({"credits": {"remaining": 1000}}),
        ] {
            let (status, refused) = call(
                "PATCH",
                format!("/api/api-keys/{id}"),
                Some(body.clone()),
                metered.clone(),
            )
            .await;
            assert_eq!(status, 403, "{body}: {refused}");
            assert_eq!(refused["reason"], "looser_limits", "{body}");
        }
        // Nor mint a key less limited than itself.
        let (status, refused) = call(
            "POST",
            "/api/api-keys".into(),
            Some(json!({"name": "free", "userId": "root", "scopes": ["admin"]})),
            metered.clone(),
        )
        .await;
        assert_eq!(
            (status, refused["reason"].clone()),
            (403, json!("looser_limits"))
        );
        // Tightening is fine, for the key itself too; an unlimited admin may lift anything.
        let (status, _) = call(
            "PATCH",
            format!("/api/api-keys/{id}"),
            Some(json!({"credits": {"remaining": 10}})),
            metered.clone(),
        )
        .await;
        assert_eq!(status, 200);
        let (status, lifted) = call(
            "PATCH",
            format!("/api/api-keys/{id}"),
            Some(json!({"ratelimits": [], "credits": null})),
            root_key.clone(),
        )
        .await;
        assert_eq!(status, 200, "{lifted}");
        assert_eq!(lifted["apiKey"]["ratelimits"], json!([]));
        assert_eq!(lifted["apiKey"]["credits"], Value::Null);
        // Bad shapes are 400 naming the field.
        let (status, bad) = call(
            "PATCH",
            format!("/api/api-keys/{id}"),
            Some(json!({"ratelimits": [{"name": "r", "limit": 0, "duration": 1000}]})),
            root_key,
        )
        .await;
        assert_eq!(status, 400);
        assert!(bad["error_description"]
            .as_str()
            .unwrap()
            .contains("ratelimits"));
    });
}
