//! The leak-report endpoint (`keygate::leaks`) mounted at `/leaks/github` through each
//! framework's own harness: axum (`tower::ServiceExt::oneshot`) and actix-web
//! (`actix_web::test::init_service`). A signed report of an opaque and a JWT key revokes
//! both at once and is answered with the protocol's labels; altered, unsigned, wrongly
//! signed and oversize reports are refused and the store is left as it was.

// Test code: a panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::panic)]

use keygate::leaks::{GithubKeys, LeakReports, GITHUB_PATH};
use keygate::{KeyFormat, KeyRecord, NewKey, Rejection};
use serde_json::{json, Value};

use crate::support::github::{keys_document, report, Signer};
use crate::support::{forge_opaque, other_secret, rejection_of, secret_part, Harness, PREFIX};

const GITHUB_ID: &str = "f9525bf080f75b3506ca1ead061add62b8633a346606dc5fe544e29231c6ee0d";
const MAX_BODY: usize = 2048;

/// A gate with an opaque and a JWT key, GitHub's signer, and the endpoint.
struct Fixture {
    h: Harness,
    opaque: String,
    jwt: String,
    signer: Signer,
    reports: LeakReports,
}

async fn fixture() -> Fixture {
    let h = Harness::new();
    let opaque = h.gate.mint(NewKey::new("sync", "alice")).await.unwrap();
    let jwt = h
        .gate
        .mint(NewKey::new("abs", "alice").format(KeyFormat::Jwt))
        .await
        .unwrap();
    let signer = Signer::new(GITHUB_ID);
    let keys = GithubKeys::from_json(keys_document(&[&signer]).as_bytes()).unwrap();
    let reports = LeakReports::new(h.gate.clone(), keys).max_body(MAX_BODY);
    Fixture {
        opaque: opaque.key.expose().to_owned(),
        jwt: jwt.key.expose().to_owned(),
        h,
        signer,
        reports,
    }
}

/// What a framework answered.
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn assert_refused(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.json()["error"], code, "{}", self.body);
    }
}

/// The report the framework tests send, with the labels it must get back.
fn scenario(fx: &Fixture) -> (String, Value) {
    let forged = forge_opaque(
        PREFIX,
        keygate::KeyId::random(),
        &other_secret(secret_part(&fx.opaque, PREFIX)),
    );
    let body = report(&[&fx.opaque, &fx.jwt, &forged]);
    let labels = json!([
        {"token_raw": fx.opaque, "token_type": "keygate_api_key", "label": "true_positive"},
        {"token_raw": fx.jwt, "token_type": "keygate_api_key", "label": "true_positive"},
        {"token_raw": forged, "token_type": "keygate_api_key", "label": "false_positive"},
    ]);
    (body, labels)
}

/// Both keys now refuse, and the store holds them revoked.
async fn assert_both_revoked(fx: &Fixture) {
    for token in [&fx.opaque, &fx.jwt] {
        assert_eq!(
            rejection_of(fx.h.gate.verify(token).await),
            Rejection::Inactive
        );
    }
    let records = fx.h.store.all().await;
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| !r.active));
}

/// Sends each refused request through `post` and checks that nothing changed.
async fn assert_refusals<F, Fut>(fx: &Fixture, post: F)
where
    F: Fn(Vec<(&'static str, String)>, String) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let (body, _) = scenario(fx);
    let good = fx.signer.sign(body.as_bytes());
    let impostor = Signer::new(GITHUB_ID).sign(body.as_bytes());
    let id = || ("github-public-key-identifier", GITHUB_ID.to_owned());
    let sig = |s: &str| ("Github-Public-Key-Signature", s.to_owned());
    let big = report(&vec![fx.opaque.as_str(); 30]);
    assert!(big.len() > MAX_BODY);
    let big_signature = fx.signer.sign(big.as_bytes());
    let before: Vec<KeyRecord> = fx.h.store.all().await;
    let writes = fx.h.store.calls().writes();

    let tampered = body.replacen("content", "commit", 1);
    post(vec![id(), sig(&good)], tampered)
        .await
        .assert_refused(401, "invalid_signature");
    post(vec![id(), sig(&impostor)], body.clone())
        .await
        .assert_refused(401, "invalid_signature");
    post(
        vec![
            ("github-public-key-identifier", "unknown".to_owned()),
            sig(&good),
        ],
        body.clone(),
    )
    .await
    .assert_refused(401, "unknown_key_identifier");
    post(vec![sig(&good)], body.clone())
        .await
        .assert_refused(401, "missing_signature");
    post(vec![id()], body.clone())
        .await
        .assert_refused(401, "missing_signature");
    post(vec![], body.clone())
        .await
        .assert_refused(401, "missing_signature");
    post(vec![id(), sig(&good), sig(&good)], body.clone())
        .await
        .assert_refused(400, "invalid_request");
    post(vec![id(), sig(&big_signature)], big)
        .await
        .assert_refused(413, "payload_too_large");

    assert_eq!(
        fx.h.store.all().await,
        before,
        "a refused report changed the store"
    );
    assert_eq!(fx.h.store.calls().writes(), writes);
    for token in [&fx.opaque, &fx.jwt] {
        fx.h.gate.verify(token).await.unwrap();
    }
}

#[cfg(feature = "axum")]
mod axum_endpoint {
    use super::*;
    use axum::body::Body;
    use axum::http::header::CONTENT_TYPE;
    use axum::http::{Method, Request};
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app(fx: &Fixture) -> Router {
        // The application's own body limit is smaller than a report: the endpoint's wins.
        Router::new()
            .merge(keygate::axum::leak_routes(GITHUB_PATH, fx.reports.clone()))
            .layer(axum::extract::DefaultBodyLimit::max(16))
    }

    async fn call(app: Router, request: Request<Body>) -> Answer {
        let response = app.oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            content_type,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    async fn post(fx: &Fixture, headers: Vec<(&'static str, String)>, body: String) -> Answer {
        let mut request = Request::post(GITHUB_PATH).header(CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        call(app(fx), request.body(Body::from(body)).unwrap()).await
    }

    #[tokio::test]
    async fn a_signed_report_revokes_both_keys_and_is_labelled() {
        let fx = fixture().await;
        let (body, labels) = scenario(&fx);
        let signature = fx.signer.sign(body.as_bytes());
        let answer = post(
            &fx,
            vec![
                ("Github-Public-Key-Identifier", GITHUB_ID.to_owned()),
                ("Github-Public-Key-Signature", signature),
            ],
            body,
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        assert_eq!(answer.json(), labels);
        assert_both_revoked(&fx).await;
    }

    #[tokio::test]
    async fn refused_reports_change_nothing() {
        let fx = fixture().await;
        assert_refusals(&fx, |headers, body| post(&fx, headers, body)).await;
        let get = Request::builder()
            .method(Method::GET)
            .uri(GITHUB_PATH)
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(app(&fx), get).await.status, 405);
    }
}

#[cfg(feature = "actix")]
mod actix_endpoint {
    use super::*;
    use actix_web::http::header::CONTENT_TYPE;
    use actix_web::test::{self, TestRequest};
    use actix_web::{web, App};

    fn run<F: std::future::Future>(f: F) -> F::Output {
        actix_web::rt::System::new().block_on(f)
    }

    async fn call(fx: &Fixture, request: TestRequest) -> Answer {
        // The application's own payload limit is smaller than a report: the endpoint's wins.
        let app = test::init_service(App::new().app_data(web::PayloadConfig::new(16)).service(
            keygate::actix::leak_resource(GITHUB_PATH, fx.reports.clone()),
        ))
        .await;
        let response = test::call_service(&app, request.to_request()).await;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = test::read_body(response).await;
        Answer {
            status,
            content_type,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    async fn post(fx: &Fixture, headers: Vec<(&'static str, String)>, body: String) -> Answer {
        let mut request = TestRequest::post()
            .uri(GITHUB_PATH)
            .insert_header((CONTENT_TYPE, "application/json"));
        for (name, value) in headers {
            request = request.append_header((name, value));
        }
        call(fx, request.set_payload(body)).await
    }

    #[test]
    fn a_signed_report_revokes_both_keys_and_is_labelled() {
        run(async {
            let fx = fixture().await;
            let (body, labels) = scenario(&fx);
            let signature = fx.signer.sign(body.as_bytes());
            let answer = post(
                &fx,
                vec![
                    ("Github-Public-Key-Identifier", GITHUB_ID.to_owned()),
                    ("Github-Public-Key-Signature", signature),
                ],
                body,
            )
            .await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            assert_eq!(answer.content_type.as_deref(), Some("application/json"));
            assert_eq!(answer.json(), labels);
            assert_both_revoked(&fx).await;
        });
    }

    #[test]
    fn refused_reports_change_nothing() {
        run(async {
            let fx = fixture().await;
            assert_refusals(&fx, |headers, body| post(&fx, headers, body)).await;
            let get = TestRequest::get().uri(GITHUB_PATH);
            assert_eq!(call(&fx, get).await.status, 405);
        });
    }
}
