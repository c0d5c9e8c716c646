//! The admin page (`keygate::admin::page`) as axum and actix-web serve it: the same bytes,
//! the Content-Security-Policy and the other security headers on every answer, content
//! types, the redirect to the trailing slash, 404/405; the HTML, script and style are
//! checked for inline code and HTML-parsing sinks; and the admin API's `GET /users`, which
//! the page's user picker reads. The page in a real browser is `tests/browser/admin_page.py`
//! (`.ci/admin_page.sh`).

// Test code: a panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::panic)]
#![cfg(any(feature = "axum", feature = "actix"))]

use std::collections::BTreeMap;

use async_trait::async_trait;
use keygate::admin::page::CONTENT_SECURITY_POLICY;
use keygate::admin::AdminPage;
use keygate::{
    DirectoryError, DirectoryUser, Keygate, MemoryStore, NewKey, Owner, Pepper, UserDirectory,
};
use serde_json::{json, Value};

/// What one answer looked like, whichever framework sent it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// The security headers every answer of the page carries, whatever its status.
fn assert_security_headers(reply: &Reply, what: &str) {
    assert_eq!(
        reply.header("content-security-policy"),
        Some(CONTENT_SECURITY_POLICY),
        "{what}"
    );
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ] {
        assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
    }
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    assert_eq!(
        reply.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(
        reply.header("referrer-policy"),
        Some("no-referrer"),
        "{what}"
    );
    assert_eq!(reply.header("x-frame-options"), Some("DENY"), "{what}");
    assert!(reply.header("cache-control").is_some(), "{what}");
}

/// (path, content type, cache-control) of every file the page serves.
const FILES: [(&str, &str, &str); 5] = [
    ("/admin/", "text/html; charset=utf-8", "no-store"),
    ("/admin/index.html", "text/html; charset=utf-8", "no-store"),
    (
        "/admin/app.js",
        "text/javascript; charset=utf-8",
        "no-cache",
    ),
    ("/admin/app.css", "text/css; charset=utf-8", "no-cache"),
    ("/admin/favicon.svg", "image/svg+xml", "no-cache"),
];

/// The page's answers through one framework (`send(method, path)`), checked.
async fn check_page<F, Fut>(send: F)
where
    F: Fn(&'static str, &'static str) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let mut html = String::new();
    for (path, content_type, cache) in FILES {
        let reply = send("GET", path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        assert_eq!(reply.header("cache-control"), Some(cache), "{path}");
        assert_security_headers(&reply, path);
        assert!(!reply.body.is_empty(), "{path}");
        if path == "/admin/" {
            html = reply.text().to_owned();
        }
        let head = send("HEAD", path).await;
        assert_eq!(
            (head.status, head.body.len()),
            (200, 0),
            "HEAD {path}: headers only"
        );
        assert_eq!(head.header("content-type"), Some(content_type));
    }
    assert!(html.contains(r#"<meta name="keygate-api-base" content="/api/api-keys">"#));

    // The mount point without its slash: to it with the slash, relative (a proxy's path
    // prefix survives).
    let redirect = send("GET", "/admin").await;
    assert_eq!(redirect.status, 308);
    assert_eq!(redirect.header("location"), Some("./admin/"));
    assert_security_headers(&redirect, "redirect");

    for (method, path, status) in [
        ("GET", "/admin/nope.js", 404),
        ("GET", "/admin/../Cargo.toml", 404),
        ("GET", "/admin/app.js/x", 404),
        ("POST", "/admin/", 405),
        ("DELETE", "/admin/app.js", 405),
    ] {
        let reply = send(method, path).await;
        assert_eq!(reply.status, status, "{method} {path}");
        assert_security_headers(&reply, path);
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        if status == 405 {
            assert_eq!(reply.header("allow"), Some("GET, HEAD"));
        }
    }
}

/// Every tag of an HTML document, as its raw text between `<` and `>`.
fn tags(html: &str) -> Vec<&str> {
    let mut tags = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>').expect("unclosed tag");
        tags.push(&after[..end]);
        rest = &after[end + 1..];
    }
    tags
}

/// The attribute names of one tag (lowercase), e.g. `script src="app.js" defer` →
/// `["src", "defer"]`.
fn attributes(tag: &str) -> Vec<String> {
    let mut names = Vec::new();
    let body = tag
        .split_once(char::is_whitespace)
        .map_or("", |(_, rest)| rest);
    let mut chars = body.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || c == '/' {
            chars.next();
            continue;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() || c == '/' {
                break;
            }
            name.push(c.to_ascii_lowercase());
            chars.next();
        }
        if chars.peek() == Some(&'=') {
            chars.next();
            match chars.peek() {
                Some(&q) if q == '"' || q == '\'' => {
                    chars.next();
                    for c in chars.by_ref() {
                        if c == q {
                            break;
                        }
                    }
                }
                _ => {
                    while let Some(&c) = chars.peek() {
                        if c.is_whitespace() {
                            break;
                        }
                        chars.next();
                    }
                }
            }
        }
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

#[test]
fn the_html_has_no_inline_script_style_or_handler() {
    let page = AdminPage::new();
    let html = String::from_utf8(page.respond("GET", "/").body.into_owned()).unwrap();
    let tags = tags(&html);
    assert!(tags.len() > 50, "the tag scanner found the page's tags");
    let mut scripts = 0;
    for tag in &tags {
        let name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap()
            .to_ascii_lowercase();
        let attrs = attributes(tag);
        if name == "script" {
            scripts += 1;
            assert!(
                attrs.iter().any(|a| a == "src"),
                "inline <script> without src: <{tag}>"
            );
        }
        assert_ne!(name, "style", "inline <style> element");
        assert!(
            !attrs.iter().any(|a| a == "style"),
            "style= attribute: <{tag}>"
        );
        assert!(
            !attrs.iter().any(|a| a.starts_with("on")),
            "on*= handler: <{tag}>"
        );
        for attr in ["href", "src"] {
            if let Some(at) = tag.find(&format!("{attr}=\"")) {
                let value = &tag[at + attr.len() + 2..];
                assert!(
                    !value.starts_with("http") && !value.starts_with("//"),
                    "third-party asset: <{tag}>"
                );
                assert!(
                    !value.starts_with("javascript:"),
                    "javascript: URL: <{tag}>"
                );
            }
        }
    }
    assert_eq!(scripts, 1, "one script, app.js");
    // Every </script> closes the one <script src>: nothing between them.
    assert!(html.contains(r#"<script src="app.js" defer></script>"#));

    // The scanner itself: it would have caught each of these.
    assert_eq!(attributes(r#"div onclick="x()" a=b"#), ["onclick", "a"]);
    assert_eq!(attributes(r#"p STYLE='color:red'"#), ["style"]);
    assert_eq!(
        attributes("input disabled value=\"a b\" x"),
        ["disabled", "value", "x"]
    );
}

#[test]
fn the_script_never_parses_data_as_html() {
    let page = AdminPage::new();
    let js = String::from_utf8(page.respond("GET", "/app.js").body.into_owned()).unwrap();
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "setTimeout(\"",
        "localStorage",
        "document.cookie",
    ] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }
    assert!(js.contains("textContent"));
    assert!(js.contains("sessionStorage"));
    let css = String::from_utf8(page.respond("GET", "/app.css").body.into_owned()).unwrap();
    for external in ["@import", "url(", "http:", "https:"] {
        assert!(!css.contains(external), "app.css loads {external}");
    }
}

// ---- the admin API's GET /users -------------------------------------------------------

struct Listed;

#[async_trait]
impl UserDirectory for Listed {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        Ok(match user_id {
            "root" => Some(Owner::with_permissions(["admin", "library:read"])),
            "alice" => Some(Owner::with_permissions(["library:read"])),
            _ => None,
        })
    }

    async fn users(&self) -> Result<Option<Vec<DirectoryUser>>, DirectoryError> {
        Ok(Some(vec![
            DirectoryUser::new("root").name("Root"),
            DirectoryUser::new("alice").name("Alice <b>"),
        ]))
    }
}

/// A directory that knows its users but does not list them (the trait's default).
struct Unlisted;

#[async_trait]
impl UserDirectory for Unlisted {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        Ok((user_id == "root").then(|| Owner::with_permissions(["admin"])))
    }
}

fn pepper() -> Pepper {
    Pepper::new(1, [9u8; 32]).unwrap()
}

/// (gate, admin key, admin key id, a non-admin key).
async fn users_fixture(
    directory: Option<Box<dyn Fn() -> Keygate>>,
) -> (Keygate, String, String, String) {
    let gate = match directory {
        Some(build) => build(),
        None => Keygate::builder(MemoryStore::new(), pepper())
            .build()
            .unwrap(),
    };
    // With a directory, root is admin by it; without one, only a key scoped to "admin".
    let admin = gate
        .mint(NewKey::new("admin", "root").scopes(["admin"]))
        .await
        .unwrap();
    let other = gate
        .mint(NewKey::new("reader", "alice").scopes(["library:read"]))
        .await
        .unwrap();
    (
        gate,
        admin.key.expose().to_owned(),
        admin.record.id.to_string(),
        other.key.expose().to_owned(),
    )
}

fn listed_gate() -> Keygate {
    Keygate::builder(MemoryStore::new(), pepper())
        .users(Listed)
        .build()
        .unwrap()
}

fn unlisted_gate() -> Keygate {
    Keygate::builder(MemoryStore::new(), pepper())
        .users(Unlisted)
        .build()
        .unwrap()
}

/// A directory with more users than the API shows.
struct Crowded;

#[async_trait]
impl UserDirectory for Crowded {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        Ok((user_id == "root").then(|| Owner::with_permissions(["admin"])))
    }

    async fn users(&self) -> Result<Option<Vec<DirectoryUser>>, DirectoryError> {
        Ok(Some(
            (0..keygate::bounds::MAX_PAGE + 5)
                .map(|n| DirectoryUser::new(format!("u{n}")))
                .collect(),
        ))
    }
}

/// A directory that cannot be asked.
struct Down;

#[async_trait]
impl UserDirectory for Down {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        Ok((user_id == "root").then(|| Owner::with_permissions(["admin"])))
    }

    async fn users(&self) -> Result<Option<Vec<DirectoryUser>>, DirectoryError> {
        Err(DirectoryError::new(std::io::Error::other("users db down")))
    }
}

#[tokio::test]
async fn directory_users_are_capped_and_failures_are_errors() {
    let gate = Keygate::builder(MemoryStore::new(), pepper())
        .users(Crowded)
        .build()
        .unwrap();
    let users = gate.directory_users().await.unwrap().unwrap();
    assert_eq!(users.len(), keygate::bounds::MAX_PAGE);
    assert_eq!(users[0].id, "u0");
    let gate = Keygate::builder(MemoryStore::new(), pepper())
        .users(Down)
        .build()
        .unwrap();
    assert!(gate.directory_users().await.is_err());
    let gate = Keygate::builder(MemoryStore::new(), pepper())
        .build()
        .unwrap();
    assert_eq!(gate.directory_users().await.unwrap(), None);
}

/// The admin API as the page's "Usage limits" and "Network" sections use it, through one
/// framework's mount (`call(method, path, key, body)` answers status and JSON): the create
/// body; edits that send only the changed fields (the rest keep their values, credits their
/// count); the 400 texts the page maps to its fields (`allowedCidrs[i]: …`,
/// `allowedOrigins[i]: …`, `credits: …`, `ratelimits: …`), which write nothing and never
/// echo the value; restarting the credit count; and lifting everything.
async fn check_usage_edits<F, Fut>(gate: &Keygate, call: F)
where
    F: Fn(&'static str, String, Option<Value>) -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    let (status, created) = call(
        "POST",
        "/api/api-keys".into(),
        Some(json!({
            "name": "Metered sync", "userId": "alice",
            "ratelimits": [{"name": "requests", "limit": 1, "duration": 60000, "autoApply": true}],
            "credits": {"remaining": 4200, "refill": {"interval": "monthly", "amount": 1000, "refillDay": 15}},
        })),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let id = created["apiKey"]["id"].as_str().unwrap().to_owned();
    let key = created["apiKey"]["apiKey"].as_str().unwrap().to_owned();
    let path = format!("/api/api-keys/{id}");
    gate.verify(&key).await.unwrap();
    assert!(
        gate.verify(&key).await.is_err(),
        "1 per minute: the second use is refused"
    );

    // Network only: the limits stay, the credits keep the count left (4,199).
    let (status, edited) = call(
        "PATCH",
        path.clone(),
        Some(json!({"allowedCidrs": ["127.0.0.0/8", "::1"], "allowedOrigins": ["https://app.example.com"]})),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    let view = &edited["apiKey"];
    assert_eq!(view["allowedCidrs"], json!(["127.0.0.0/8", "::1/128"]));
    assert_eq!(view["allowedOrigins"], json!(["https://app.example.com"]));
    assert_eq!(
        view["ratelimits"],
        json!([{"name": "requests", "limit": 1, "duration": 60000, "autoApply": true}])
    );
    assert_eq!(view["credits"]["remaining"], 4199);
    assert_eq!(
        view["credits"]["refill"],
        json!({"interval": "monthly", "amount": 1000, "refillDay": 15})
    );

    // The 400s the page shows at a field: exact texts, nothing written, no value echoed.
    let hostile = "<img src=x onerror=alert(1)>";
    for (body, said) in [
        (
            json!({"allowedCidrs": ["10.0.0.0/8", "10.0.0.1/8"], "name": "renamed"}),
            "allowedCidrs[1]: address has bits set beyond the prefix length: write the network address",
        ),
        (
            json!({"allowedCidrs": [hostile]}),
            "allowedCidrs[0]: not an IPv4 or IPv6 address",
        ),
        (
            json!({"allowedOrigins": ["https://ok.example", hostile]}),
            "allowedOrigins[1]: not an origin: expected scheme://host[:port]",
        ),
        (
            json!({"credits": {"remaining": 5, "refill": {"interval": "monthly", "amount": 5, "refillDay": 40}}}),
            "credits: refillDay must be 1 to 31",
        ),
        (
            json!({"ratelimits": [{"name": "requests", "limit": 0, "duration": 60000, "autoApply": true}]}),
            "ratelimits: a limit's limit must be 1 to 1000000000",
        ),
    ] {
        let (status, refused) = call("PATCH", path.clone(), Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {refused}");
        assert_eq!(refused["error"], "invalid_request", "{body}");
        assert_eq!(refused["error_description"], said, "{body}");
        assert!(!refused.to_string().contains("<img"), "{refused}");
    }
    let (_, now) = call("GET", path.clone(), None).await;
    assert_eq!(now["apiKey"]["name"], "Metered sync");
    assert_eq!(
        now["apiKey"]["allowedCidrs"],
        json!(["127.0.0.0/8", "::1/128"])
    );
    assert_eq!(now["apiKey"]["credits"]["remaining"], 4199);

    // Sending credits restarts the count from them; the list shows the count left.
    let (status, edited) = call(
        "PATCH",
        path.clone(),
        Some(json!({"credits": {"remaining": 10}})),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["apiKey"]["credits"]["remaining"], 10);
    assert_eq!(edited["apiKey"]["credits"].get("refill"), None);
    assert_eq!(edited["apiKey"]["ratelimits"][0]["limit"], 1);

    // Everything lifted: the key is used as often as it likes, from anywhere.
    let (status, lifted) = call(
        "PATCH",
        path.clone(),
        Some(json!({"ratelimits": [], "credits": null, "allowedCidrs": [], "allowedOrigins": []})),
    )
    .await;
    assert_eq!(status, 200, "{lifted}");
    for (field, empty) in [
        ("ratelimits", json!([])),
        ("credits", Value::Null),
        ("allowedCidrs", json!([])),
        ("allowedOrigins", json!([])),
    ] {
        assert_eq!(lifted["apiKey"][field], empty, "{field}");
    }
    for _ in 0..3 {
        gate.verify(&key).await.unwrap();
    }
    let (_, listed) = call("GET", "/api/api-keys".into(), None).await;
    let row = listed["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(row["ratelimits"], json!([]));
}

#[cfg(feature = "axum")]
mod axum_page {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use axum::Router;
    use http_body_util::BodyExt;
    use keygate::admin::AdminApi;
    use keygate::axum::{admin_page, admin_routes};
    use tower::ServiceExt;

    async fn send(app: &Router, method: &str, path: &str, key: Option<&str>) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    fn app(gate: Keygate) -> Router {
        Router::new()
            .merge(admin_routes("/api/api-keys", AdminApi::new(gate)))
            .merge(admin_page("/admin/", AdminPage::new()))
    }

    #[tokio::test]
    async fn the_pages_usage_edits_through_axum() {
        let gate = listed_gate();
        let admin = gate.mint(NewKey::new("admin", "root")).await.unwrap();
        let admin = admin.key.expose().to_owned();
        let app = app(gate.clone());
        check_usage_edits(&gate, |method, path, body| {
            let app = app.clone();
            let admin = admin.clone();
            async move {
                let mut request = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("authorization", format!("Bearer {admin}"));
                if body.is_some() {
                    request = request.header("content-type", "application/json");
                }
                let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
                let response = app.oneshot(request.body(body).unwrap()).await.unwrap();
                let status = response.status().as_u16();
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                (
                    status,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                )
            }
        })
        .await;
    }

    #[tokio::test]
    async fn the_page_is_served_with_its_headers() {
        let app = app(listed_gate());
        check_page(|method, path| {
            let app = app.clone();
            async move { send(&app, method, path, None).await }
        })
        .await;
        // The page is public: it holds no secret, and the API it calls checks every key.
        assert_eq!(send(&app, "GET", "/admin/", None).await.status, 200);
    }

    #[tokio::test]
    async fn the_api_base_is_configurable() {
        let app: Router = Router::new().merge(admin_page(
            "/settings/keys",
            AdminPage::new().api_base("../../api/v2/keys/"),
        ));
        let reply = send(&app, "GET", "/settings/keys/", None).await;
        assert!(reply
            .text()
            .contains(r#"<meta name="keygate-api-base" content="../../api/v2/keys">"#));
        let redirect = send(&app, "GET", "/settings/keys", None).await;
        assert_eq!(redirect.header("location"), Some("./keys/"));
        assert_eq!(send(&app, "GET", "/admin/", None).await.status, 404);
    }

    #[tokio::test]
    async fn users_lists_the_directory_for_admins_only() {
        let (gate, admin, admin_id, reader) = users_fixture(Some(Box::new(listed_gate))).await;
        let app = app(gate);
        let reply = send(&app, "GET", "/api/api-keys/users", Some(&admin)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body,
            json!({
                "users": [{"id": "root", "name": "Root"}, {"id": "alice", "name": "Alice <b>"}],
                "caller": {"keyId": admin_id, "userId": "root"},
            })
        );
        assert_eq!(reply.header("content-type"), Some("application/json"));

        let refused = send(&app, "GET", "/api/api-keys/users", Some(&reader)).await;
        assert_eq!(refused.status, 403);
        assert!(refused.text().contains("not_admin"));
        assert_eq!(
            send(&app, "GET", "/api/api-keys/users", None).await.status,
            401
        );
        let post = send(&app, "POST", "/api/api-keys/users", Some(&admin)).await;
        assert_eq!((post.status, post.header("allow")), (405, Some("GET")));
    }

    #[tokio::test]
    async fn users_is_503_when_the_directory_is_down() {
        let gate = Keygate::builder(MemoryStore::new(), pepper())
            .users(Down)
            .build()
            .unwrap();
        let admin = gate
            .mint(NewKey::new("admin", "root").scopes(["admin"]))
            .await
            .unwrap();
        let app = app(gate);
        let reply = send(&app, "GET", "/api/api-keys/users", Some(admin.key.expose())).await;
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(reply.header("retry-after").is_some());
        assert!(reply.text().contains("temporarily_unavailable"));
    }

    #[tokio::test]
    async fn users_is_null_when_the_directory_does_not_list() {
        for build in [
            None,
            Some(Box::new(unlisted_gate) as Box<dyn Fn() -> Keygate>),
        ] {
            let (gate, admin, admin_id, _) = users_fixture(build).await;
            let app = app(gate);
            let reply = send(&app, "GET", "/api/api-keys/users", Some(&admin)).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            let body: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(
                body,
                json!({"users": null, "caller": {"keyId": admin_id, "userId": "root"}})
            );
        }
    }
}

#[cfg(feature = "actix")]
mod actix_page {
    use super::*;
    use actix_web::test::{self, TestRequest};
    use actix_web::App;
    use keygate::actix::{admin_page_scope, admin_scope};
    use keygate::admin::AdminApi;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        actix_web::rt::System::new().block_on(f)
    }

    #[test]
    fn the_page_is_served_with_its_headers() {
        run(async {
            let gate = listed_gate();
            let app = test::init_service(
                App::new()
                    .service(admin_scope("/api/api-keys", AdminApi::new(gate)))
                    .service(admin_page_scope("/admin", AdminPage::new())),
            )
            .await;
            let app = &app;
            check_page(|method, path| async move {
                let request = TestRequest::default()
                    .method(method.parse().unwrap())
                    .uri(path)
                    .to_request();
                let response = test::call_service(app, request).await;
                let status = response.status().as_u16();
                let headers = response
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
                    .collect();
                let body = test::read_body(response).await.to_vec();
                Reply {
                    status,
                    headers,
                    body,
                }
            })
            .await;
        });
    }

    #[test]
    fn the_pages_usage_edits_through_actix() {
        run(async {
            let gate = listed_gate();
            let admin = gate.mint(NewKey::new("admin", "root")).await.unwrap();
            let admin = admin.key.expose().to_owned();
            let app = test::init_service(
                App::new().service(admin_scope("/api/api-keys", AdminApi::new(gate.clone()))),
            )
            .await;
            let app = &app;
            let admin = &admin;
            check_usage_edits(&gate, |method, path, body| async move {
                let mut request = TestRequest::default()
                    .method(method.parse().unwrap())
                    .uri(&path)
                    .insert_header(("authorization", format!("Bearer {admin}")));
                if let Some(body) = body {
                    request = request
                        .insert_header(("content-type", "application/json"))
                        .set_payload(body.to_string());
                }
                let response = test::call_service(app, request.to_request()).await;
                let status = response.status().as_u16();
                let bytes = test::read_body(response).await;
                (
                    status,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                )
            })
            .await;
        });
    }

    #[test]
    fn both_frameworks_serve_the_same_bytes() {
        run(async {
            let app = test::init_service(
                App::new().service(admin_page_scope("/admin", AdminPage::new())),
            )
            .await;
            let page = AdminPage::new();
            for (path, _, _) in FILES {
                let response =
                    test::call_service(&app, TestRequest::get().uri(path).to_request()).await;
                let body = test::read_body(response).await;
                let rest = path.strip_prefix("/admin").unwrap();
                assert_eq!(&body[..], &page.respond("GET", rest).body[..], "{path}");
            }
        });
    }
}
