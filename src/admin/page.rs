//! The admin page: a web page over the [admin API](crate::admin) that does what
//! Audiobookshelf's API Keys screen does (Settings → Users → API Keys). Its HTML, CSS and
//! JavaScript ship inside the crate (`src/admin/ui/`; no build step, no third-party
//! assets); the framework adapters ([`keygate::axum::admin_page`](crate::axum::admin_page),
//! [`keygate::actix::admin_page_scope`](crate::actix::admin_page_scope)) serve what
//! [`AdminPage::respond`] answers.
//!
//! What the page does: sign in with an admin key (kept in the tab's memory, or in
//! `sessionStorage` if the admin ticks "stay signed in in this tab"; never in a cookie), sent
//! as `Authorization: Bearer` to the admin API; list keys (name, user, created, last used,
//! expires, limits, active); create one (name, user picked from the directory when it lists
//! its users, see [`UserDirectory::users`](crate::UserDirectory::users), optional expiry,
//! active) and show its plaintext once with a copy button; switch keys on and off; edit
//! (name, user, active); rotate (with an optional grace period); delete after a
//! confirmation. The create and edit form has two collapsed sections, "Usage limits" (rate
//! limits and credits with their refill) and "Network" (allowed networks and origins), in
//! the admin API's [Unkey shapes](crate::admin#usage-limits-unkeys-shapes-as-extensions-of-audiobookshelfs);
//! the list sums them up per key (`100/min · 4,200 credits · 2 networks`, credits as the
//! count left now), and a 400 that names one of these fields is shown at that field. An
//! edit sends only what changed (so an unchanged credit count is not restarted). Every
//! value it shows is set as text (`textContent`), never parsed as HTML.
//!
//! Every answer carries a strict Content-Security-Policy ([`CONTENT_SECURITY_POLICY`]: no
//! inline script or style, nothing from another origin, no framing), `X-Content-Type-Options:
//! nosniff`, `Referrer-Policy: no-referrer`, `X-Frame-Options: DENY`,
//! `Cross-Origin-Opener-Policy` and `Cross-Origin-Resource-Policy: same-origin`, and
//! `Cache-Control` (`no-store` for the HTML, which names the API; `no-cache` for the assets,
//! so an upgrade is picked up at once).
//!
//! The CSP's `connect-src 'self'` means the admin API must be on the page's origin: mount
//! both in one server (the API at `/api/api-keys`, the page at `/admin`, say).
//!
//! ```
//! use keygate::admin::AdminPage;
//!
//! let page = AdminPage::new().api_base("/api/api-keys");
//! let index = page.respond("GET", "/");
//! assert_eq!(index.status, 200);
//! assert!(index.headers.iter().any(|(name, value)| *name == "content-security-policy"
//!     && value.contains("script-src 'self'")));
//! assert_eq!(page.respond("GET", "/app.js").content_type(), Some("text/javascript; charset=utf-8"));
//! assert_eq!(page.respond("GET", "/nope").status, 404);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// The Content-Security-Policy every answer of the page carries: scripts, styles and API
/// calls from the page's own origin only, no inline script or style, images from the page's
/// origin or `data:` URLs, no plugins, no framing, no `<base>`, no form submission.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; manifest-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Where the page calls the admin API unless [`AdminPage::api_base`] says otherwise: the
/// path Audiobookshelf uses.
pub const DEFAULT_API_BASE: &str = "/api/api-keys";

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");
const FAVICON_SVG: &str = include_str!("ui/favicon.svg");

/// The placeholder in `index.html` that [`AdminPage::api_base`] fills (an attribute value).
const API_BASE_PLACEHOLDER: &str = "{{KEYGATE_API_BASE}}";

/// The admin page: its assets, with the admin API's location written into the HTML.
/// Cheap to clone.
#[derive(Clone)]
pub struct AdminPage {
    api_base: Arc<str>,
    index: Arc<str>,
}

impl fmt::Debug for AdminPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminPage")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl Default for AdminPage {
    fn default() -> Self {
        Self::new()
    }
}

impl AdminPage {
    /// The page, calling the admin API at [`DEFAULT_API_BASE`] (`/api/api-keys`).
    pub fn new() -> Self {
        Self::with_base(DEFAULT_API_BASE)
    }

    /// Where the admin API is mounted, as the page's `fetch` calls see it: an absolute
    /// path (`/api/api-keys`) or one relative to the page's URL (`../api/api-keys` from
    /// `/admin/`), on the page's origin (the CSP allows no other). Trailing slashes are
    /// dropped.
    #[must_use]
    pub fn api_base(self, base: impl AsRef<str>) -> Self {
        Self::with_base(base.as_ref())
    }

    /// The admin API's location the page uses.
    pub fn api_base_path(&self) -> &str {
        &self.api_base
    }

    fn with_base(base: &str) -> Self {
        let base = base.trim_end_matches('/');
        let index = INDEX_HTML.replace(API_BASE_PLACEHOLDER, &escape_attribute(base));
        Self {
            api_base: Arc::from(base),
            index: Arc::from(index),
        }
    }

    /// The answer to `method` on `path`, for a page mounted at the root (`path` is the
    /// request path: `"/"`, `"/app.js"`, …). See [`respond_at`](Self::respond_at).
    pub fn respond(&self, method: &str, path: &str) -> PageResponse {
        self.respond_at("", method, path)
    }

    /// The answer to `method` on `path`, the request path after `mount`, where the page
    /// is mounted (`"/admin"`: `path` is `"/"`, `"/app.js"`, …). For framework adapters;
    /// the axum and actix ones call it.
    ///
    /// `GET` and `HEAD` only (405 otherwise, with `Allow`); `HEAD` answers carry the
    /// headers and an empty body. An empty `path` (the mount point without its trailing
    /// slash) is a 308 redirect to it with the slash, so the page's relative asset URLs
    /// resolve: `Location: ./admin/` (relative, so a reverse proxy's path prefix
    /// survives). Anything else unknown is 404.
    ///
    /// ```
    /// use keygate::admin::AdminPage;
    ///
    /// let page = AdminPage::new();
    /// let redirect = page.respond_at("/admin", "GET", "");
    /// assert_eq!((redirect.status, redirect.header("location")), (308, Some("./admin/")));
    /// assert_eq!(page.respond_at("/admin", "GET", "/app.css").status, 200);
    /// ```
    pub fn respond_at(&self, mount: &str, method: &str, path: &str) -> PageResponse {
        let asset: Option<(&'static str, Cow<'static, [u8]>, &'static str)> = match path {
            "" => {
                let location = match mount_segment(mount) {
                    "" => "./".to_owned(),
                    segment => format!("./{segment}/"),
                };
                let mut response = PageResponse::plain(308, "see the page with a trailing /");
                response.headers.push(("location", location));
                return response;
            }
            "/" | "/index.html" => Some((
                "text/html; charset=utf-8",
                Cow::Owned(self.index.as_bytes().to_vec()),
                "no-store",
            )),
            "/app.js" => Some((
                "text/javascript; charset=utf-8",
                Cow::Borrowed(APP_JS.as_bytes()),
                "no-cache",
            )),
            "/app.css" => Some((
                "text/css; charset=utf-8",
                Cow::Borrowed(APP_CSS.as_bytes()),
                "no-cache",
            )),
            "/favicon.svg" => Some((
                "image/svg+xml",
                Cow::Borrowed(FAVICON_SVG.as_bytes()),
                "no-cache",
            )),
            _ => None,
        };
        let Some((content_type, body, cache)) = asset else {
            return PageResponse::not_found();
        };
        let head = match method {
            "GET" => false,
            "HEAD" => true,
            _ => {
                let mut response = PageResponse::plain(405, "method not allowed");
                response.headers.push(("allow", "GET, HEAD".to_owned()));
                return response;
            }
        };
        let mut response = PageResponse::new(200, content_type, cache, body);
        if head {
            response.body = Cow::Borrowed(&[]);
        }
        response
    }
}

/// One answer of the admin page: status, headers (names lowercase) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageResponse {
    /// HTTP status.
    pub status: u16,
    /// Every header to send: `content-type`, `cache-control`, the security headers, and
    /// `location` or `allow` where they apply.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Cow<'static, [u8]>,
}

impl PageResponse {
    fn new(
        status: u16,
        content_type: &'static str,
        cache: &'static str,
        body: Cow<'static, [u8]>,
    ) -> Self {
        let headers = vec![
            ("content-type", content_type.to_owned()),
            ("cache-control", cache.to_owned()),
            (
                "content-security-policy",
                CONTENT_SECURITY_POLICY.to_owned(),
            ),
            ("x-content-type-options", "nosniff".to_owned()),
            ("referrer-policy", "no-referrer".to_owned()),
            ("x-frame-options", "DENY".to_owned()),
            ("cross-origin-opener-policy", "same-origin".to_owned()),
            ("cross-origin-resource-policy", "same-origin".to_owned()),
        ];
        Self {
            status,
            headers,
            body,
        }
    }

    fn plain(status: u16, text: &'static str) -> Self {
        Self::new(
            status,
            "text/plain; charset=utf-8",
            "no-store",
            Cow::Borrowed(text.as_bytes()),
        )
    }

    /// 404, with the page's headers.
    pub(crate) fn not_found() -> Self {
        Self::plain(404, "not found")
    }

    /// The `content-type` header's value.
    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// The value of header `name` (lowercase), if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `text` escaped for a double-quoted HTML attribute value.
fn escape_attribute(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The last non-empty segment of a mount path (`"/admin"` → `"admin"`), for the
/// redirect to the page's canonical URL.
fn mount_segment(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_base_is_escaped_into_the_html() {
        let page = AdminPage::new().api_base("/x\"><script>alert(1)</script>/");
        let html = String::from_utf8(page.respond("GET", "/").body.into_owned()).unwrap();
        assert!(!html.contains(API_BASE_PLACEHOLDER));
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("content=\"/x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""));
        assert_eq!(
            page.api_base_path(),
            "/x\"><script>alert(1)</script>",
            "trailing slash dropped"
        );
    }

    #[test]
    fn the_default_base_is_audiobookshelfs() {
        let html =
            String::from_utf8(AdminPage::new().respond("GET", "/").body.into_owned()).unwrap();
        assert!(html.contains("content=\"/api/api-keys\""));
    }

    #[test]
    fn methods_paths_and_redirects() {
        let page = AdminPage::new();
        let head = page.respond("HEAD", "/app.css");
        assert_eq!((head.status, head.body.len()), (200, 0));
        assert_eq!(head.content_type(), Some("text/css; charset=utf-8"));
        let post = page.respond("POST", "/");
        assert_eq!(
            (post.status, post.header("allow")),
            (405, Some("GET, HEAD"))
        );
        let redirect = page.respond_at("/x/admin/", "GET", "");
        assert_eq!(
            (redirect.status, redirect.header("location")),
            (308, Some("./admin/"))
        );
        for path in ["/../Cargo.toml", "/app.js/", "//app.js", "/APP.JS"] {
            assert_eq!(page.respond("GET", path).status, 404, "{path}");
        }
        assert_eq!(mount_segment("/a/admin/"), "admin");
        assert_eq!(mount_segment("/"), "");
    }

    #[test]
    fn every_answer_carries_the_security_headers() {
        let page = AdminPage::new();
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/app.js"),
            ("GET", "/nope"),
            ("PUT", "/"),
            ("GET", ""),
        ] {
            let response = page.respond(method, path);
            assert_eq!(
                response.header("content-security-policy"),
                Some(CONTENT_SECURITY_POLICY)
            );
            assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
            assert_eq!(response.header("referrer-policy"), Some("no-referrer"));
            assert!(response.header("cache-control").is_some());
        }
    }
}
