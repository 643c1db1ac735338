//! Support for tests with the hostile connector: variants of its `describe()` answer, a
//! tripwire listener that records anything that reaches it, and a loopback vendor that
//! answers the flood modes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::artifacts;
use crate::sim::{Listen, Server};

/// Where the hostile component keeps the `describe()` answer the tests rewrite.
const MARKER: &[u8] = b"@@HOSTILE-DESCRIBE@@";
const BLOCK_LEN: usize = 4096;

/// Writes a copy of the hostile connector to `dir/file` whose `describe()` applies
/// `overrides` (keys: id, display_name, version, default_base_url, hosts, label,
/// max_batch_size, max_concurrent_requests, sleep_ms, spin). Each variant has its own digest.
pub fn variant(dir: &Path, file: &str, overrides: serde_json::Value) -> PathBuf {
    let mut wasm = std::fs::read(artifacts::HOSTILE).expect("the hostile connector is built");
    let at = wasm
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .expect("the hostile connector carries its describe block")
        + MARKER.len();
    let json = overrides.to_string();
    let room = BLOCK_LEN - MARKER.len();
    assert!(json.len() <= room, "overrides longer than {room} bytes");
    wasm[at..at + room].fill(b' ');
    wasm[at..at + json.len()].copy_from_slice(json.as_bytes());
    let path = dir.join(file);
    std::fs::write(&path, wasm).unwrap();
    path
}

/// A loopback listener that accepts connections and keeps every byte sent to it, to prove
/// nothing (and no credential) reached it.
pub struct Tripwire {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Tripwire {
    pub async fn start() -> Tripwire {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let received: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (count, keep) = (connections.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let keep = keep.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buffer = [0u8; 4096];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        keep.lock().unwrap().extend_from_slice(&buffer[..n]);
                    }
                });
            }
        });
        Tripwire {
            addr,
            connections,
            received,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Whether `secret` (or its base64 in a Basic header) arrived.
    pub fn saw(&self, secret: &str) -> bool {
        use base64::Engine as _;
        let received = self.received.lock().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{secret}:x"));
        [secret.as_bytes(), b64.as_bytes()]
            .iter()
            .any(|needle| received.windows(needle.len()).any(|w| w == *needle))
    }
}

/// A loopback vendor for the flood modes: `GET …/lists/ID.json` and `…/clients.json` answer
/// `{}` after `latency`; `GET …/big` answers 16 MiB; `POST …/upload` answers `{}`. It counts
/// requests in progress at once.
pub struct FloodVendor {
    server: Server,
    peak: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// The size of `/big`'s answer.
pub const BIG_ANSWER: usize = 16 << 20;

impl FloodVendor {
    pub async fn start(latency: Duration) -> FloodVendor {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let big = Bytes::from(vec![b'x'; BIG_ANSWER]);
        let (p, r) = (peak.clone(), requests.clone());
        let server = Server::start(
            Listen::plain(0),
            move |method: Method, uri: Uri, _headers: HeaderMap, _body: Bytes| {
                let (in_flight, peak, requests, big) =
                    (in_flight.clone(), p.clone(), r.clone(), big.clone());
                async move {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(latency).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let path = uri.path();
                    if method == Method::GET && path.ends_with("/big") {
                        return (StatusCode::OK, Body::from(big)).into_response();
                    }
                    let answer: Response = (StatusCode::OK, "{}").into_response();
                    answer
                }
            },
        )
        .await
        .unwrap();
        FloodVendor {
            server,
            peak,
            requests,
        }
    }

    /// A base URL on this vendor.
    pub fn base_url(&self) -> String {
        format!("http://{}/api", self.server.addr())
    }

    /// The most requests it had in progress at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Requests it received.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// This process's resident memory now, in bytes (Linux).
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples this process's resident memory every few milliseconds while alive; `peak` gives
/// the highest seen.
pub struct RssSampler {
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    pub fn start() -> RssSampler {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(resident_bytes()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(resident_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssSampler { peak, stop }
    }

    /// The highest resident memory seen so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(resident_bytes())
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
