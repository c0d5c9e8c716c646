//! A TCP proxy on 127.0.0.1 that can silently stop forwarding the connections a marker
//! picks out, without closing them: the change-feed tests use it to make a feed's
//! connection go quiet (a partition, a firewall that dropped its state) while the node's
//! other connections keep working.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The proxy; it stops when dropped (connections it holds stay open until then).
pub struct StallProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    marker: Vec<u8>,
    stalled: AtomicBool,
    /// The upstream-side local address of every marked connection, in order.
    marked: Mutex<Vec<SocketAddr>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl StallProxy {
    /// Forwards to `upstream`; a connection whose client has sent `marker` is marked.
    pub async fn start(upstream: SocketAddr, marker: &[u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            marker: marker.to_vec(),
            stalled: AtomicBool::new(false),
            marked: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let accept = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let task = tokio::spawn(pipe(inbound, outbound, shared.clone()));
                    shared.tasks.lock().unwrap().push(task);
                }
            })
        };
        Self {
            addr,
            shared,
            accept,
        }
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on nothing more passes on a marked connection, either way (new marked
    /// connections included); nothing is closed.
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
    }

    /// Marked connections forward again (what they held is delivered late).
    pub fn resume(&self) {
        self.shared.stalled.store(false, Ordering::SeqCst);
    }

    /// The upstream-side local addresses of the marked connections so far (what the
    /// server sees as their client address).
    pub fn marked(&self) -> Vec<SocketAddr> {
        self.shared.marked.lock().unwrap().clone()
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.shared.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn pipe(inbound: TcpStream, outbound: TcpStream, shared: Arc<Shared>) {
    let marked = Arc::new(AtomicBool::new(false));
    let upstream_local = outbound.local_addr().ok();
    let (client_read, client_write) = inbound.into_split();
    let (server_read, server_write) = outbound.into_split();
    let up = pump(
        client_read,
        server_write,
        shared.clone(),
        marked.clone(),
        upstream_local,
    );
    let down = pump(server_read, client_write, shared, marked, None);
    tokio::join!(up, down);
}

/// Copies `from` to `to`; on the client side (`upstream_local` given) looks for the
/// marker. Holds data (never forwards it) while the proxy is stalled and the connection
/// marked.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    marked: Arc<AtomicBool>,
    upstream_local: Option<SocketAddr>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(local) = upstream_local {
            if !marked.load(Ordering::SeqCst) && seen.len() < 64 * 1024 {
                seen.extend_from_slice(&buf[..n]);
                if seen
                    .windows(shared.marker.len())
                    .any(|w| w == shared.marker.as_slice())
                {
                    marked.store(true, Ordering::SeqCst);
                    shared.marked.lock().unwrap().push(local);
                }
            }
        }
        while shared.stalled.load(Ordering::SeqCst) && marked.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
