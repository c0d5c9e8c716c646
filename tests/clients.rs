//! Real HTTP clients against the running example servers (`examples/server.rs` for axum,
//! `examples/actix_server.rs` for actix-web), each on a free port with a fresh SQLite file.
//!
//! Per server: read the `admin API key: …` line it prints on first start; then with `curl`,
//! Python `requests` (`tests/clients/flow.py`) and Node's built-in `fetch`
//! (`tests/clients/flow.mjs`): create a key for `user` → use it → deactivate it → refused →
//! delete it → 404, sending `Authorization: Bearer <key>` as Audiobookshelf documents it.
//! Then SIGTERM must make the server exit 0, having flushed last-used times to the
//! database, and a second start on the same database must print no key and still accept
//! the first admin key (the pepper file persisted).
//!
//! A missing client tool is skipped with a note on stderr, unless `CI=true`: then it fails.
//! The example binaries are built (or found up to date) with this test's own features.

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg(all(feature = "sqlite", any(feature = "axum", feature = "actix")))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const STARTUP: Duration = Duration::from_secs(60);
const SHUTDOWN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Building and finding the example binaries
// ---------------------------------------------------------------------------------------

/// The features this test was compiled with: the examples are built with the same ones,
/// so cargo reuses the library it already built for the test. With every feature known
/// here on, `--all-features` (what CI runs), so a feature added later still matches.
fn feature_args() -> Vec<String> {
    let all = [
        ("axum", cfg!(feature = "axum")),
        ("actix", cfg!(feature = "actix")),
        ("sqlite", cfg!(feature = "sqlite")),
        ("postgres", cfg!(feature = "postgres")),
        ("redis", cfg!(feature = "redis")),
        ("testing", cfg!(feature = "testing")),
    ];
    if all.iter().all(|(_, on)| *on) {
        return vec!["--all-features".to_owned()];
    }
    let on: Vec<&str> = all.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect();
    vec!["--features".to_owned(), on.join(",")]
}

/// `target/<profile>`: this test binary lives in `target/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps")
        .to_path_buf()
}

/// Builds the examples this test needs, once per process, and returns the directory the
/// binaries are in. Running cargo even when a binary exists keeps a stale one from being
/// tested after a source change; when it is up to date this takes about a second.
fn examples_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
        let mut command = Command::new(cargo);
        command
            .args(["build", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .args(feature_args());
        if cfg!(feature = "axum") {
            command.args(["--example", "server"]);
        }
        if cfg!(feature = "actix") {
            command.args(["--example", "actix_server"]);
        }
        if profile.file_name().is_some_and(|name| name == "release") {
            command.arg("--release");
        }
        eprintln!("building the example servers: {command:?}");
        let status = command.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the examples failed");
        profile.join("examples")
    })
}

fn example_binary(name: &str) -> PathBuf {
    let path = examples_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "no example binary at {}", path.display());
    path
}

// ---------------------------------------------------------------------------------------
// A scratch directory and a running server
// ---------------------------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "keygate-clients-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("kept {} for inspection", self.0.display());
        }
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct Server {
    child: Child,
    port: u16,
    stdout: Receiver<String>,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `binary` on a free port over `db`, in `dir` (so nothing lands in the
    /// repository), with no `KEYGATE_PEPPER`: the server keeps its pepper beside the
    /// database.
    fn start(binary: &Path, db: &str, dir: &Path) -> Self {
        let port = free_port();
        let mut child = Command::new(binary)
            .current_dir(dir)
            .env("KEYGATE_ADDR", format!("127.0.0.1:{port}"))
            .env("KEYGATE_DB", db)
            // The CLI's variable: the examples read it too.
            .env("KEYGATE_PREFIX", "abs")
            .env_remove("KEYGATE_PEPPER")
            .env_remove("KEYGATE_PEPPER_FILE")
            .env_remove("KEYGATE_PEPPER_VERSION")
            .env_remove("KEYGATE_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));

        let (tx, stdout) = mpsc::channel();
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout_lines.clone();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            port,
            stdout,
            stdout_lines,
            stderr,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything the server printed on stdout so far.
    fn stdout_lines(&self) -> Vec<String> {
        self.stdout_lines.lock().unwrap().clone()
    }

    /// The key from the first stdout line, which must be `admin API key: <key>`.
    fn admin_key(&mut self) -> String {
        let line = self.stdout.recv_timeout(STARTUP).unwrap_or_else(|_| {
            panic!(
                "no `admin API key:` line within {STARTUP:?}; stderr:\n{}",
                self.stderr()
            )
        });
        line.strip_prefix("admin API key: ")
            .unwrap_or_else(|| panic!("unexpected first stdout line {line:?}"))
            .to_owned()
    }

    /// Waits until `GET /healthz` answers `ok`.
    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(reply) = http(self.port, "GET", "/healthz", None, None) {
                assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited early ({status}); stderr:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "server not healthy in time; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + SHUTDOWN;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {SHUTDOWN:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("--- server stderr ---\n{}", self.stderr());
        }
    }
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client, for the checks the test makes itself
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

fn http(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(key) = key {
        request.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(parse_response(&raw))
}

/// Parses a raw HTTP/1.1 response (as sent with `Connection: close`, or printed by
/// `curl -D -`), decoding a chunked body.
fn parse_response(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------------------

/// A client tool is not there: skip it, unless on CI.
fn missing(tool: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{tool} is required on CI: {why}");
    }
    eprintln!("SKIPPED the {tool} client: {why}");
}

fn curl(port: u16, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Reply {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10", "-D", "-", "-X", method]);
    if let Some(key) = key {
        // Exactly as Audiobookshelf's API docs show it.
        command.args(["-H", &format!("Authorization: Bearer {key}")]);
    }
    if let Some(body) = body {
        command.args(["-H", "Content-Type: application/json", "--data"]);
        command.arg(body.to_string());
    }
    command.arg(format!("http://127.0.0.1:{port}{path}"));
    let output = command.output().expect("run curl");
    assert!(
        output.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_response(&output.stdout)
}

fn curl_flow(server: &Server, admin_key: &str) {
    match Command::new("curl").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(_) => return missing("curl", "`curl --version` failed"),
        Err(e) => return missing("curl", &format!("not found ({e}); apt-get install curl")),
    }
    let port = server.port;
    let expect = |reply: Reply, status: u16, what: &str| {
        assert_eq!(reply.status, status, "curl {what}: {}", reply.body);
        reply
    };

    let created = expect(
        curl(
            port,
            "POST",
            "/api/api-keys",
            Some(admin_key),
            Some(&json!({ "name": "curl flow", "userId": "user", "expiresIn": 3600, "isActive": true })),
        ),
        200,
        "create",
    )
    .json()["apiKey"]
        .clone();
    let key = created["apiKey"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["userId"], "user");
    let item = format!("/api/api-keys/{id}");

    let used = expect(
        curl(port, "GET", "/api/libraries", Some(&key), None),
        200,
        "use",
    );
    assert!(used.json()["libraries"].is_array());
    expect(
        curl(port, "GET", "/api/api-keys", Some(&key), None),
        403,
        "non-admin",
    );
    let anonymous = expect(
        curl(port, "GET", "/api/libraries", None, None),
        401,
        "no key",
    );
    assert!(anonymous
        .header("www-authenticate")
        .is_some_and(|c| c.starts_with("Bearer realm=") && !c.contains("error=")));

    let patched = expect(
        curl(
            port,
            "PATCH",
            &item,
            Some(admin_key),
            Some(&json!({ "isActive": false })),
        ),
        200,
        "deactivate",
    );
    assert_eq!(patched.json()["apiKey"]["isActive"], false);
    let refused = expect(
        curl(port, "GET", "/api/libraries", Some(&key), None),
        401,
        "refused",
    );
    assert!(refused
        .header("www-authenticate")
        .is_some_and(|c| c.contains(r#"error="invalid_token""#)));

    expect(
        curl(port, "DELETE", &item, Some(admin_key), None),
        200,
        "delete",
    );
    expect(curl(port, "GET", &item, Some(admin_key), None), 404, "gone");
    eprintln!("curl flow: ok");
}

/// Runs a flow script; exit status 77 means the runtime lacks what the script needs.
fn script_flow(server: &Server, admin_key: &str, program: &str, script: &str, install: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let output = match Command::new(program)
        .arg(&path)
        .env("KEYGATE_URL", server.url())
        .env("KEYGATE_ADMIN_KEY", admin_key)
        .output()
    {
        Ok(output) => output,
        Err(e) => return missing(program, &format!("not found ({e}); {install}")),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(77) {
        return missing(script, &format!("{} ({install})", stderr.trim()));
    }
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stderr}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    eprintln!("{}", String::from_utf8_lossy(&output.stdout).trim());
}

// ---------------------------------------------------------------------------------------
// Reading the database after the server is gone
// ---------------------------------------------------------------------------------------

fn last_used_at(db: &str, id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use keygate::KeyStore;
        let store = keygate::SqliteStore::connect(&format!("{db}?mode=ro"))
            .await
            .expect("open the database read-only");
        let record = store
            .get(id.parse().unwrap())
            .await
            .unwrap()
            .expect("the record exists");
        store.pool().close().await;
        record.last_used_at
    })
}

// ---------------------------------------------------------------------------------------
// The scenario, per framework
// ---------------------------------------------------------------------------------------

fn clients_against(example: &str) {
    let binary = example_binary(example);
    let dir = TempDir::new(example);
    let db_file = dir.0.join("keys.db");
    let db = format!("sqlite://{}", db_file.display());

    // First start: a fresh database, so exactly one line on stdout with the admin key.
    let mut server = Server::start(&binary, &db, &dir.0);
    let admin_key = server.admin_key();
    assert!(
        admin_key.starts_with("abs_") && keygate::checksum_ok(&admin_key),
        "{admin_key}"
    );
    server.wait_healthy();

    curl_flow(&server, &admin_key);
    script_flow(
        &server,
        &admin_key,
        "python3",
        "flow.py",
        "pip install requests",
    );
    script_flow(
        &server,
        &admin_key,
        "node",
        "flow.mjs",
        "Node 18+ has fetch",
    );

    let status = server.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; stderr:\n{}",
        server.stderr()
    );
    assert_eq!(
        server.stdout_lines(),
        vec![format!("admin API key: {admin_key}")],
        "stdout carries the key line and nothing else"
    );

    // The pepper was generated beside the database, private, and never printed.
    let pepper_file = dir.0.join("keys.db.pepper");
    let pepper = std::fs::read_to_string(&pepper_file).expect("pepper file beside the database");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pepper_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "pepper file mode {mode:o}");
    }
    assert!(pepper.trim().len() >= 32);
    assert!(
        !server.stderr().contains(pepper.trim()),
        "pepper printed on stderr"
    );
    drop(server);

    // Second start on the same database: no key printed, the first admin key still works.
    let mut server = Server::start(&binary, &db, &dir.0);
    server.wait_healthy();
    let me = http(server.port, "GET", "/api/me", Some(&admin_key), None).unwrap();
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["userId"], "admin");

    // A key used once: its last use is queued in memory (the admin key's first use just
    // flushed, so the next flush is an interval away) until shutdown writes it.
    let created = http(
        server.port,
        "POST",
        "/api/api-keys",
        Some(&admin_key),
        Some(&json!({ "name": "flush probe", "userId": "user" })),
    )
    .unwrap();
    assert_eq!(created.status, 200, "{}", created.body);
    let probe = created.json()["apiKey"].clone();
    let probe_key = probe["apiKey"].as_str().unwrap();
    let probe_id = probe["id"].as_str().unwrap();
    let used = http(server.port, "GET", "/api/libraries", Some(probe_key), None).unwrap();
    assert_eq!(used.status, 200, "{}", used.body);
    assert_eq!(last_used_at(&db, probe_id), None, "written before shutdown");

    let status = server.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; stderr:\n{}",
        server.stderr()
    );
    assert_eq!(
        server.stdout_lines(),
        Vec::<String>::new(),
        "no key on a later start"
    );
    assert!(
        last_used_at(&db, probe_id).is_some(),
        "SIGTERM must flush the pending last-used time; stderr:\n{}",
        server.stderr()
    );
}

#[cfg(feature = "axum")]
#[test]
fn axum_server_with_curl_python_and_node() {
    clients_against("server");
}

#[cfg(feature = "actix")]
#[test]
fn actix_server_with_curl_python_and_node() {
    clients_against("actix_server");
}

/// The example servers write their pepper to `<db>.pepper` (default `keygate.db.pepper`,
/// in the working directory): `git add -A` in a checkout must not pick it up.
#[test]
fn the_example_pepper_file_is_git_ignored() {
    let gitignore = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.gitignore"))
        .expect(".gitignore is readable");
    assert!(
        gitignore.lines().any(|line| line.trim() == "*.pepper"),
        "{gitignore}"
    );
    for path in ["keygate.db.pepper", "data/keys.db.pepper"] {
        let ignored = Command::new("git")
            .args(["check-ignore", "-q", path])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
        if let Ok(status) = ignored {
            // 0: ignored; 1: not ignored; 128: not a git checkout (a packaged crate).
            assert_ne!(status.code(), Some(1), "{path} is not ignored");
        }
    }
}
