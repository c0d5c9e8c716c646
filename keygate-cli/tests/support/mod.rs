//! Where the CLI tests find their services, and scratch paths (the same helpers as the
//! library's `tests/support`, copied so that this package builds on its own).
//!
//! A service URL comes from the environment. When it is unset the test is skipped with a
//! message, except on CI (`CI=true`), where a missing service is an error: CI must run
//! every store's tests.
#![allow(dead_code)] // each test binary uses some of these

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `KEYGATE_TEST_POSTGRES_URL`, e.g. `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_url() -> Option<String> {
    service_url("KEYGATE_TEST_POSTGRES_URL", "PostgreSQL")
}

/// `KEYGATE_TEST_REDIS_URL`, e.g. `redis://127.0.0.1:6379/`.
pub fn redis_url() -> Option<String> {
    service_url("KEYGATE_TEST_REDIS_URL", "Redis")
}

fn service_url(var: &str, service: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} is not set: CI must run the {service} tests against a live {service}")
        }
        _ => {
            eprintln!("skipping: set {var} to run this test against a live {service}");
            None
        }
    }
}

/// A path for an SQLite database in the temp directory that does not exist yet. The
/// caller removes it (with [`remove_sqlite`]) when done.
pub fn sqlite_temp_path() -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "keygate-test-{}-{nanos}-{}.db",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes an SQLite database and its WAL files, ignoring what is not there.
pub fn remove_sqlite(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// A name unique to this run, for owners, application names and the like.
pub fn unique(label: &str) -> String {
    format!("{label}-{}", keygate::KeyId::random())
}

/// An HTTP/1.1 answer as [`http`] read it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request over a fresh connection (`Connection: close`), read to the end: a client
/// with no dependencies, for servers the tests start as separate processes.
pub fn http(addr: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the server accepts");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The pepper [`Process`] starts servers with.
pub const PEPPER: &str = "serve test pepper: thirty-two bytes or more";

/// `keygate serve` as a process, with its stdout and stderr read line by line.
pub struct Process {
    pub child: Child,
    pub stdout: std::sync::mpsc::Receiver<String>,
    pub stderr: std::sync::mpsc::Receiver<String>,
    pub addr: String,
}

fn lines(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

impl Process {
    pub fn start(db: &Path, env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
        command.arg("serve").args(args);
        for name in [
            "KEYGATE_PEPPER",
            "KEYGATE_PEPPER_FILE",
            "KEYGATE_PEPPER_VERSION",
            "KEYGATE_JWT_SECRET",
            "KEYGATE_JWT_SECRET_FILE",
            "KEYGATE_CONFIG",
            "KEYGATE_PREFIX",
            "KEYGATE_LOG",
            "RUST_LOG",
        ] {
            command.env_remove(name);
        }
        command
            .env("KEYGATE_DB", format!("sqlite://{}", db.display()))
            .env("KEYGATE_PEPPER", PEPPER)
            .env("KEYGATE_ADDR", "127.0.0.1:0")
            .env("KEYGATE_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("keygate serve starts");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let mut process = Self {
            child,
            stdout,
            stderr,
            addr: String::new(),
        };
        let listening = process.log_until(|event| event["message"] == "listening");
        process.addr = listening["addr"].as_str().unwrap().to_owned();
        process
    }

    /// Reads JSON log lines until one matches; panics on a non-JSON line or after 60 s.
    pub fn log_until(&self, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let line = self
                .stderr
                .recv_timeout(Duration::from_secs(60))
                .expect("keygate serve logs in time");
            let event: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("a log line that is not JSON: {line}"));
            if wanted(&event) {
                return event;
            }
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        self.log_until(|event| event["message"] == "stopped; last-used times written");
        self.child.wait().unwrap()
    }
}

/// A failed test must not leave its server running (it would hold the port).
impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn post_json(addr: &str, target: &str, auth: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    body.to_owned()
}
