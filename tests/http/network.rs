//! Network restrictions through both frameworks (axum `oneshot`, actix `init_service`):
//! a key with allowed networks or origins, requests from inside and outside them, from
//! behind a trusted proxy (X-Forwarded-For or Forwarded) and with spoofed forwarding
//! headers from untrusted peers. Every case runs through both frameworks, through the
//! `Principal` extractor and through the `Authenticate` layer/middleware, and must answer
//! the same status and body in all four.

// Test code: a panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::panic)]
#![cfg(all(feature = "axum", feature = "actix"))]

use std::net::{IpAddr, SocketAddr};

use keygate::admin::AdminApi;
use keygate::http::{ProxyHeader, TrustedProxies};
use keygate::limits::{AllowedOrigin, Cidr};
use keygate::{Keygate, MemoryStore, NewKey, Pepper, Principal};
use serde_json::Value;

const PEPPER: &[u8] = b"network test pepper, at least 32 bytes long";

fn cidr(text: &str) -> Cidr {
    text.parse().unwrap()
}

fn origin(text: &str) -> AllowedOrigin {
    text.parse().unwrap()
}

fn gate(header: ProxyHeader) -> Keygate {
    Keygate::builder(MemoryStore::new(), Pepper::new(1, PEPPER).unwrap())
        .trusted_proxies(TrustedProxies::new([cidr("10.0.0.0/8"), cidr("fd00::/8")]).header(header))
        .build()
        .unwrap()
}

/// The keys of one gate: allowed networks only, allowed origins only, none.
struct Keys {
    networks: String,
    origins: String,
    open: String,
}

async fn keys(gate: &Keygate) -> Keys {
    let mint = |new: NewKey| async move { gate.mint(new).await.unwrap().key.expose().to_owned() };
    Keys {
        networks: mint(
            NewKey::new("office", "u1")
                .allowed_cidrs([cidr("198.51.100.0/24"), cidr("2001:db8::/32")]),
        )
        .await,
        origins: mint(
            NewKey::new("web", "u1").allowed_origins([origin("https://app.example.com")]),
        )
        .await,
        open: mint(NewKey::new("open", "u1")).await,
    }
}

/// One request: the connection's peer (`None`: unknown), extra headers, the key.
struct Case<'a> {
    name: &'a str,
    peer: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    key: &'a str,
    status: u16,
    /// The `error` code of a refusal.
    error: Option<&'a str>,
}

fn peer(case: &Case<'_>) -> Option<SocketAddr> {
    case.peer
        .map(|ip| SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 40_000))
}

async fn via_axum(gate: &Keygate, case: &Case<'_>, layered: bool) -> (u16, Value) {
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let app = if layered {
        Router::new()
            .route(
                "/me",
                get(
                    |axum::Extension(p): axum::Extension<Principal>| async move {
                        p.key_name().to_owned()
                    },
                ),
            )
            .layer(keygate::axum::Authenticate::required(gate.clone()))
    } else {
        Router::new()
            .route(
                "/me",
                get(|p: Principal| async move { p.key_name().to_owned() }),
            )
            .with_state(gate.clone())
    };
    let mut request = axum::http::Request::get("/me")
        .header("authorization", format!("Bearer {}", case.key))
        .body(Body::empty())
        .unwrap();
    for (name, value) in &case.headers {
        request.headers_mut().append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    if let Some(addr) = peer(case) {
        request.extensions_mut().insert(ConnectInfo(addr));
    }
    let response = app.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn via_actix(gate: &Keygate, case: &Case<'_>, layered: bool) -> (u16, Value) {
    use actix_web::{test, web, App};

    let mut request = test::TestRequest::get()
        .uri("/me")
        .insert_header(("authorization", format!("Bearer {}", case.key)));
    for (name, value) in &case.headers {
        request = request.append_header((*name, *value));
    }
    if let Some(addr) = peer(case) {
        request = request.peer_addr(addr);
    }
    let response = if layered {
        let app = test::init_service(
            App::new().service(
                web::scope("")
                    .wrap(keygate::actix::Authenticate::required(gate.clone()))
                    .route(
                        "/me",
                        web::get().to(|p: web::ReqData<Principal>| async move {
                            p.key_name().to_owned()
                        }),
                    ),
            ),
        )
        .await;
        test::call_service(&app, request.to_request()).await
    } else {
        let app = test::init_service(App::new().app_data(web::Data::new(gate.clone())).route(
            "/me",
            web::get().to(|p: Principal| async move { p.key_name().to_owned() }),
        ))
        .await;
        test::call_service(&app, request.to_request()).await
    };
    let status = response.status().as_u16();
    let body = test::read_body(response).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Runs `cases` through axum and actix, extractor and layer, and checks each answer.
async fn check_all(gate: &Keygate, cases: &[Case<'_>]) {
    for case in cases {
        for layered in [false, true] {
            let answers = [
                ("axum", via_axum(gate, case, layered).await),
                ("actix", via_actix(gate, case, layered).await),
            ];
            for (framework, (status, body)) in answers {
                let what = format!("{} ({framework}, layered: {layered})", case.name);
                assert_eq!(status, case.status, "{what}: {body}");
                assert_eq!(
                    body.get("error").and_then(Value::as_str),
                    case.error,
                    "{what}: {body}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn allowed_networks_through_x_forwarded_for_behind_trusted_proxies_only() {
    let gate = gate(ProxyHeader::XForwardedFor);
    let keys = keys(&gate).await;
    let refused = Some("network_not_allowed");
    let xff = |value| vec![("x-forwarded-for", value)];
    let case = |name, peer, headers, key, status, error| Case {
        name,
        peer,
        headers,
        key,
        status,
        error,
    };
    let k = keys.networks.as_str();
    let cases = [
        case("inside, IPv4", Some("198.51.100.7"), vec![], k, 200, None),
        case(
            "inside, IPv4-mapped",
            Some("::ffff:198.51.100.7"),
            vec![],
            k,
            200,
            None,
        ),
        case("inside, IPv6", Some("2001:db8::1"), vec![], k, 200, None),
        case("outside", Some("203.0.113.1"), vec![], k, 403, refused),
        case(
            "outside, IPv6",
            Some("2001:db9::1"),
            vec![],
            k,
            403,
            refused,
        ),
        case("no peer known: fail closed", None, vec![], k, 403, refused),
        // A client that is no proxy of ours claims an allowed address: ignored.
        case(
            "spoofed XFF from an untrusted peer",
            Some("203.0.113.1"),
            xff("198.51.100.7"),
            k,
            403,
            refused,
        ),
        case(
            "spoofed XFF cannot shut out an allowed peer either",
            Some("198.51.100.7"),
            xff("203.0.113.1"),
            k,
            200,
            None,
        ),
        case(
            "trusted proxy, XFF inside",
            Some("10.0.0.2"),
            xff("198.51.100.7"),
            k,
            200,
            None,
        ),
        case(
            "trusted proxy over IPv6, XFF inside",
            Some("fd00::2"),
            xff("2001:db8::9"),
            k,
            200,
            None,
        ),
        case(
            "trusted proxy, XFF outside",
            Some("10.0.0.2"),
            xff("203.0.113.9"),
            k,
            403,
            refused,
        ),
        // The client put an allowed address in front; the proxy appended the real one.
        case(
            "trusted proxy, spoofed entry to the left",
            Some("10.0.0.2"),
            xff("198.51.100.7, 203.0.113.9"),
            k,
            403,
            refused,
        ),
        case(
            "two trusted proxies",
            Some("10.0.0.2"),
            xff("203.0.113.9, 198.51.100.7, 10.9.9.9"),
            k,
            200,
            None,
        ),
        case(
            "two XFF header lines are one list",
            Some("10.0.0.2"),
            vec![
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-for", "198.51.100.7"),
            ],
            k,
            200,
            None,
        ),
        case(
            "trusted proxy, no XFF",
            Some("10.0.0.2"),
            vec![],
            k,
            403,
            refused,
        ),
        case(
            "trusted proxy, garbage XFF",
            Some("10.0.0.2"),
            xff("not an ip"),
            k,
            403,
            refused,
        ),
        // Only the declared header counts.
        case(
            "trusted proxy, Forwarded instead of XFF",
            Some("10.0.0.2"),
            vec![("forwarded", "for=198.51.100.7")],
            k,
            403,
            refused,
        ),
        // Unrestricted keys do not care, and a bad key is 401 wherever it comes from.
        case(
            "open key from anywhere",
            Some("203.0.113.1"),
            vec![],
            &keys.open,
            200,
            None,
        ),
        case(
            "open key, nothing known",
            None,
            vec![],
            &keys.open,
            200,
            None,
        ),
    ];
    check_all(&gate, &cases).await;
    let mut bad = keys.networks.clone();
    bad.pop();
    bad.push(if keys.networks.ends_with('A') {
        'B'
    } else {
        'A'
    });
    check_all(
        &gate,
        &[case(
            "bad key from outside",
            Some("203.0.113.1"),
            vec![],
            &bad,
            401,
            Some("invalid_token"),
        )],
    )
    .await;
    // Counted under its own reason (once per framework and path per refusing case).
    let counts = gate.refusal_counts();
    assert_eq!(counts.get("network_not_allowed"), 4 * 9);
    assert_eq!(counts.get("origin_not_allowed"), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn allowed_networks_through_forwarded() {
    let gate = gate(ProxyHeader::Forwarded);
    let keys = keys(&gate).await;
    let refused = Some("network_not_allowed");
    let k = keys.networks.as_str();
    let fwd = |value| vec![("forwarded", value)];
    let cases = [
        Case {
            name: "trusted proxy, Forwarded v6 inside",
            peer: Some("10.0.0.2"),
            headers: fwd(r#"for="[2001:db8::5]:443";proto=https"#),
            key: k,
            status: 200,
            error: None,
        },
        Case {
            name: "trusted proxy, spoofed left element",
            peer: Some("10.0.0.2"),
            headers: fwd("for=198.51.100.7, for=203.0.113.9"),
            key: k,
            status: 403,
            error: refused,
        },
        Case {
            name: "trusted proxy, obfuscated client",
            peer: Some("10.0.0.2"),
            headers: fwd("for=_hidden"),
            key: k,
            status: 403,
            error: refused,
        },
        Case {
            name: "trusted proxy, XFF is not read",
            peer: Some("10.0.0.2"),
            headers: vec![("x-forwarded-for", "198.51.100.7")],
            key: k,
            status: 403,
            error: refused,
        },
        Case {
            name: "untrusted peer, spoofed Forwarded",
            peer: Some("203.0.113.1"),
            headers: fwd("for=198.51.100.7"),
            key: k,
            status: 403,
            error: refused,
        },
    ];
    check_all(&gate, &cases).await;
}

#[tokio::test(flavor = "current_thread")]
async fn allowed_origins() {
    let gate = gate(ProxyHeader::XForwardedFor);
    let keys = keys(&gate).await;
    let refused = Some("origin_not_allowed");
    let k = keys.origins.as_str();
    let at = |name, headers, status, error| Case {
        name,
        peer: Some("203.0.113.1"),
        headers,
        key: k,
        status,
        error,
    };
    let cases = [
        at(
            "allowed origin",
            vec![("origin", "https://app.example.com")],
            200,
            None,
        ),
        at(
            "allowed origin, default port and case",
            vec![("origin", "HTTPS://App.Example.com:443")],
            200,
            None,
        ),
        at(
            "other origin",
            vec![("origin", "https://evil.example")],
            403,
            refused,
        ),
        at(
            "other scheme",
            vec![("origin", "http://app.example.com")],
            403,
            refused,
        ),
        at("opaque origin", vec![("origin", "null")], 403, refused),
        at("no Origin: fail closed", vec![], 403, refused),
        at(
            "two Origin headers",
            vec![
                ("origin", "https://app.example.com"),
                ("origin", "https://app.example.com"),
            ],
            403,
            refused,
        ),
    ];
    check_all(&gate, &cases).await;
}

/// The admin API takes, shows and changes `allowedCidrs`/`allowedOrigins`, and a caller
/// confined to some networks cannot mint or widen a key beyond them.
#[tokio::test(flavor = "current_thread")]
async fn admin_api_fields_and_no_escalation() {
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let gate = gate(ProxyHeader::XForwardedFor);
    let root = gate
        .mint(NewKey::new("root", "ops").scopes(["admin"]))
        .await
        .unwrap()
        .key;
    let confined = gate
        .mint(
            NewKey::new("confined", "ops")
                .scopes(["admin"])
                .allowed_cidrs([cidr("198.51.100.0/24")]),
        )
        .await
        .unwrap()
        .key;
    let app = keygate::axum::admin_routes("/keys", AdminApi::new(gate.clone()));
    let call = |method: &str, path: String, key: &str, body: Value| {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .extension(ConnectInfo(SocketAddr::new(
                "198.51.100.7".parse().unwrap(),
                1,
            )))
            .body(Body::from(body.to_string()))
            .unwrap();
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    let (status, body) = call(
        "POST",
        "/keys".into(),
        root.expose(),
        serde_json::json!({
            "name": "web", "userId": "ops", "scopes": [],
            "allowedCidrs": ["10.0.0.0/8", "::ffff:192.0.2.0/120"],
            "allowedOrigins": ["HTTPS://App.Example.com:443"]
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let view = &body["apiKey"];
    assert_eq!(
        view["allowedCidrs"],
        serde_json::json!(["10.0.0.0/8", "192.0.2.0/24"])
    );
    assert_eq!(
        view["allowedOrigins"],
        serde_json::json!(["https://app.example.com"])
    );
    let id = view["id"].as_str().unwrap().to_owned();
    let stored = gate.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.network.cidrs().len(), 2);

    // Bad entries: 400 naming the entry, nothing written.
    let before = gate
        .list(keygate::ListQuery::new())
        .await
        .unwrap()
        .records
        .len();
    for (field, bad) in [
        (
            "allowedCidrs",
            serde_json::json!(["10.0.0.0/8", "10.1.2.3/8"]),
        ),
        ("allowedCidrs", serde_json::json!(["garbage"])),
        (
            "allowedOrigins",
            serde_json::json!(["https://a.example/path"]),
        ),
        ("allowedCidrs", serde_json::json!("10.0.0.0/8")),
    ] {
        let mut body = serde_json::json!({"name": "x", "userId": "ops", "scopes": []});
        body[field] = bad.clone();
        let (status, answer) = call("POST", "/keys".into(), root.expose(), body).await;
        assert_eq!(status, 400, "{field}: {bad}: {answer}");
        assert_eq!(answer["error"], "invalid_request");
        // Entries that do not parse are named; a wrong JSON type is serde's message.
        let description = answer["error_description"].as_str().unwrap();
        assert!(description.contains(field) || !bad.is_array(), "{answer}");
    }
    let too_many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    let (status, _) = call(
        "POST",
        "/keys".into(),
        root.expose(),
        serde_json::json!({"name": "x", "userId": "ops", "scopes": [], "allowedCidrs": too_many}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        gate.list(keygate::ListQuery::new())
            .await
            .unwrap()
            .records
            .len(),
        before
    );

    // The confined admin: a key within its network is fine; one beyond it, or none, is
    // wider_network; lifting a key's restriction is widening.
    let (status, body) = call(
        "POST",
        "/keys".into(),
        confined.expose(),
        serde_json::json!({"name": "in", "userId": "ops", "scopes": [],
                           "allowedCidrs": ["198.51.100.128/25"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let inner_id = body["apiKey"]["id"].as_str().unwrap().to_owned();
    for wider in [
        serde_json::json!({"name": "out", "userId": "ops", "scopes": []}),
        serde_json::json!({"name": "out", "userId": "ops", "scopes": [],
                           "allowedCidrs": ["0.0.0.0/0"]}),
    ] {
        let (status, body) = call("POST", "/keys".into(), confined.expose(), wider).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["reason"], "wider_network");
    }
    for lift in [
        serde_json::json!({"allowedCidrs": []}),
        serde_json::json!({"allowedCidrs": null}),
        serde_json::json!({"allowedCidrs": ["198.51.100.0/24", "203.0.113.0/24"]}),
    ] {
        let (status, body) = call(
            "PATCH",
            format!("/keys/{inner_id}"),
            confined.expose(),
            lift.clone(),
        )
        .await;
        assert_eq!(status, 403, "{lift}: {body}");
        assert_eq!(body["reason"], "wider_network");
    }
    let still = gate.get(inner_id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(still.network.cidrs(), &[cidr("198.51.100.128/25")][..]);
    // Narrowing is allowed; the root admin may lift it.
    let (status, body) = call(
        "PATCH",
        format!("/keys/{inner_id}"),
        confined.expose(),
        serde_json::json!({"allowedCidrs": ["198.51.100.128/26"], "allowedOrigins": ["https://a.example"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["apiKey"]["allowedCidrs"],
        serde_json::json!(["198.51.100.128/26"])
    );
    let (status, body) = call(
        "PATCH",
        format!("/keys/{inner_id}"),
        root.expose(),
        serde_json::json!({"allowedCidrs": null, "allowedOrigins": []}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["apiKey"]["allowedCidrs"], serde_json::json!([]));
    let lifted = gate.get(inner_id.parse().unwrap()).await.unwrap().unwrap();
    assert!(lifted.network.is_unrestricted());

    // The confined admin's own key is refused from outside its network: 403, not 401.
    let request = axum::http::Request::get("/keys")
        .header("authorization", format!("Bearer {}", confined.expose()))
        .extension(ConnectInfo(SocketAddr::new(
            "203.0.113.1".parse().unwrap(),
            1,
        )))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
}
