//! The one seam between the broker and the network. [`Transport`] sends a request that the
//! broker's layers already checked; the network implementation resolves names itself, checks
//! every address before it opens a socket, keeps connections alive for reuse, and speaks TLS
//! through rustls. Tests put an in-process transport in its place.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::Error as HttpError;

use super::address::{AddressRefused, DialPolicy, Resolve, SharedResolver, SystemResolver};

/// An answer's body as it arrives.
pub type AnswerBody = UnsyncBoxBody<Bytes, HttpError>;

/// A future the transport returns.
pub type Sending =
    Pin<Box<dyn Future<Output = Result<http::Response<AnswerBody>, SendError>> + Send>>;

/// Why a request got no answer.
#[derive(Debug)]
pub enum SendError {
    /// The host refused it on the operator's behalf (the words say why); never retried.
    Refused(String),
    /// The network failed it.
    Failed(HttpError),
}

/// Sends one request and returns the answer's head, with its body still arriving.
pub trait Transport: Send + Sync {
    /// `timeout` covers connecting, sending the body and the answer's head.
    fn send(&self, request: http::Request<Bytes>, timeout: Duration) -> Sending;
}

/// What the host's network connections share: the resolver, the TLS settings, and the cap
/// on sockets open at once, so connectors can never starve the host of file descriptors.
pub struct Network {
    resolver: SharedResolver,
    sockets: Arc<Semaphore>,
    max_sockets: usize,
    idle_timeout: Duration,
    /// The CA bundle's certificates, read at start; the configuration is made on first use.
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    tls: OnceLock<rustls::ClientConfig>,
    fresh_connections: bool,
}

/// How the host reaches vendors.
#[derive(Clone, Default)]
pub struct NetworkOptions {
    /// Resolves vendor host names (the operating system's resolver by default; tests map
    /// names to addresses of their choosing).
    pub resolver: Option<SharedResolver>,
    /// Sockets connectors' requests may hold open at once, across all runs [default: half of
    /// the process's file-descriptor limit, at most 4096].
    pub max_open_connections: Option<usize>,
    /// A PEM file of CA certificates trusted besides the platform's roots (a corporate
    /// proxy's, or a test server's).
    pub ca_bundle: Option<std::path::PathBuf>,
    /// A new connection for every request (HTTP/1.1, no keep-alive): for proxies that
    /// mishandle kept-alive connections, and to measure what reuse buys.
    pub fresh_connections: bool,
}

impl std::fmt::Debug for NetworkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkOptions")
            .field("resolver", &self.resolver.as_ref().map(|_| "custom"))
            .field("max_open_connections", &self.max_open_connections)
            .field("ca_bundle", &self.ca_bundle)
            .field("fresh_connections", &self.fresh_connections)
            .finish()
    }
}

/// How long an unused kept-alive connection stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Network {
    /// Fails only on a CA bundle that cannot be read.
    pub fn new(options: &NetworkOptions) -> anyhow::Result<Network> {
        let max_sockets = options
            .max_open_connections
            .unwrap_or_else(default_socket_cap)
            .max(1);
        Ok(Network {
            resolver: options
                .resolver
                .clone()
                .unwrap_or_else(|| Arc::new(SystemResolver)),
            sockets: Arc::new(Semaphore::new(max_sockets)),
            max_sockets,
            idle_timeout: IDLE_TIMEOUT,
            extra_roots: match &options.ca_bundle {
                Some(path) => crate::tls::read_bundle(path, "the CA bundle")?,
                None => vec![],
            },
            tls: OnceLock::new(),
            fresh_connections: options.fresh_connections,
        })
    }

    /// A transport for one connection: its dial policy, and up to `keep_alive` idle
    /// connections kept for reuse.
    pub fn transport(&self, dial: DialPolicy, keep_alive: usize) -> NetworkTransport {
        let guarded = GuardedConnector {
            resolver: self.resolver.clone(),
            dial: Arc::new(dial),
            sockets: self.sockets.clone(),
            max_sockets: self.max_sockets,
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                self.tls
                    .get_or_init(|| crate::tls::client_config(&self.extra_roots))
                    .clone(),
            )
            .https_or_http();
        // HTTP/2 when the vendor offers it by ALPN: one connection carries every request.
        let connector = if self.fresh_connections {
            builder.enable_http1().wrap_connector(guarded)
        } else {
            builder.enable_all_versions().wrap_connector(guarded)
        };
        let keep_alive = if self.fresh_connections {
            0
        } else {
            keep_alive
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_max_idle_per_host(keep_alive)
            .pool_timer(TokioTimer::new())
            .build(connector);
        NetworkTransport { client }
    }
}

/// Half the file descriptors this process may open, between 16 and 4096: the other half
/// stays for the host's own database, lock files and logs.
fn default_socket_cap() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    (soft / 2).clamp(16, 4096) as usize
}

/// The network transport of one connection: pooled, kept-alive connections.
pub struct NetworkTransport {
    client: Client<hyper_rustls::HttpsConnector<GuardedConnector>, Full<Bytes>>,
}

impl Transport for NetworkTransport {
    fn send(&self, request: http::Request<Bytes>, timeout: Duration) -> Sending {
        let request = request.map(Full::new);
        let sending = self.client.request(request);
        Box::pin(async move {
            let response = match tokio::time::timeout(timeout, sending).await {
                Err(_) => return Err(SendError::Failed(HttpError::HttpResponseTimeout)),
                Ok(Err(e)) => return Err(send_error(&e)),
                Ok(Ok(response)) => response,
            };
            Ok(response.map(|body| body.map_err(HttpError::Hyper).boxed_unsync()))
        })
    }
}

/// Words a client failure: an address the host refused, or the network's own failure.
fn send_error(error: &hyper_util::client::legacy::Error) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<AddressRefused>() {
            return SendError::Refused(format!("a connection to {refused}"));
        }
        if let Some(full) = e.downcast_ref::<SocketsExhausted>() {
            tracing::warn!("{full}");
            return SendError::Failed(HttpError::ConnectionLimitReached);
        }
        match tls_verdict(e) {
            // Not a passing fault: another attempt meets the same certificate.
            Some(rustls::Error::InvalidCertificate(why)) => {
                return SendError::Refused(format!(
                    "a TLS connection whose certificate it does not trust ({why:?}); {}",
                    certificate_remedy(why)
                ));
            }
            Some(other) => {
                tracing::debug!("TLS failed: {other}");
                return SendError::Failed(HttpError::TlsProtocolError);
            }
            None => {}
        }
        source = e.source();
    }
    tracing::debug!("request failed: {error:#}");
    if error.is_connect() {
        SendError::Failed(HttpError::Connect(io::Error::other(format!("{error:#}"))))
    } else {
        SendError::Failed(HttpError::HttpResponseIncomplete)
    }
}

/// rustls's verdict, which travels inside (nested) io::Errors whose `source` skips it.
fn tls_verdict<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut inner = error;
    while let Some(io) = inner.downcast_ref::<io::Error>() {
        inner = io.get_ref()?;
    }
    inner.downcast_ref::<rustls::Error>()
}

/// What an operator can do about a certificate the host refused.
fn certificate_remedy(why: &rustls::CertificateError) -> &'static str {
    use rustls::CertificateError as E;
    match why {
        E::UnknownIssuer => {
            "a vendor behind a private CA needs that CA in the CA bundle (--ca-bundle)"
        }
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            "the certificate is for another host name: check the connection's base URL"
        }
        E::Expired | E::ExpiredContext { .. } | E::NotValidYet | E::NotValidYetContext { .. } => {
            "the certificate is out of date, or this machine's clock is wrong"
        }
        _ => {
            "the vendor's certificate is not acceptable; the CA bundle (--ca-bundle) adds trusted CAs"
        }
    }
}

/// The host ran out of sockets for connectors.
#[derive(Debug)]
struct SocketsExhausted(usize);

impl std::fmt::Display for SocketsExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "all {} sockets the host allows connectors are in use",
            self.0
        )
    }
}

impl std::error::Error for SocketsExhausted {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens TCP connections only to addresses the dial policy allows, each holding one of the
/// host's socket slots for as long as it is open.
#[derive(Clone)]
struct GuardedConnector {
    resolver: SharedResolver,
    dial: Arc<DialPolicy>,
    sockets: Arc<Semaphore>,
    max_sockets: usize,
}

/// How long a free socket slot is waited for before the request fails.
const SOCKET_WAIT: Duration = Duration::from_secs(30);
/// How long one TCP connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl tower_service::Service<http::Uri> for GuardedConnector {
    type Response = TokioIo<GuardedStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_string();
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let addresses: Vec<IpAddr> = match bare.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => tokio::time::timeout(CONNECT_TIMEOUT, this.resolver.resolve(bare))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "DNS lookup timed out")
                    })??,
            };
            if addresses.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host} has no address"),
                )
                .into());
            }
            // Every address is checked before any is dialled: a name that mixes public and
            // private addresses is refused whole.
            for ip in &addresses {
                this.dial.check(&host, port, *ip)?;
            }
            let slot = tokio::time::timeout(SOCKET_WAIT, this.sockets.clone().acquire_owned())
                .await
                .map_err(|_| SocketsExhausted(this.max_sockets))?
                .expect("never closed");
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            for ip in addresses {
                let target = SocketAddr::new(ip, port);
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(TokioIo::new(GuardedStream {
                            stream,
                            _slot: slot,
                        }));
                    }
                    Ok(Err(e)) => last = e,
                    Err(_) => {
                        last =
                            io::Error::new(io::ErrorKind::TimedOut, format!("{target} timed out"))
                    }
                }
            }
            Err(last.into())
        })
    }
}

/// A socket to a vendor, holding one of the host's socket slots until it closes.
pub struct GuardedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connection for GuardedStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A resolver answering from a fixed table (for tests and embedders that pin vendor
/// addresses); names it does not know fail to resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    pub names: std::collections::HashMap<String, Vec<IpAddr>>,
}

impl Resolve for StaticResolver {
    fn resolve(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        let found = self.names.get(&host.to_ascii_lowercase()).cloned();
        let host = host.to_string();
        Box::pin(async move {
            found.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{host} is unknown"))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A loopback listener that counts the connections made to it.
    async fn tripwire() -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((_socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        (port, hits)
    }

    fn network(names: &[(&str, &str)]) -> Network {
        let resolver = StaticResolver {
            names: names
                .iter()
                .map(|(n, ip)| (n.to_string(), vec![ip.parse().unwrap()]))
                .collect(),
        };
        Network::new(&NetworkOptions {
            resolver: Some(Arc::new(resolver)),
            max_open_connections: Some(4),
            ca_bundle: None,
            fresh_connections: false,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_forbidden_address_is_refused_before_dialling() {
        let (port, hits) = tripwire().await;
        let net = network(&[
            ("rebind.vendor-test.com", "127.0.0.1"),
            ("metadata.vendor-test.com", "169.254.169.254"),
        ]);
        let transport = net.transport(DialPolicy::default(), 1);
        for host in [
            "rebind.vendor-test.com",
            "metadata.vendor-test.com",
            "127.0.0.1",
        ] {
            let request = http::Request::get(format!("http://{host}:{port}/"))
                .body(Bytes::new())
                .unwrap();
            let Err(SendError::Refused(why)) =
                transport.send(request, Duration::from_secs(5)).await
            else {
                panic!("{host} was not refused");
            };
            assert!(why.starts_with(&format!("a connection to {host}")), "{why}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(hits.load(Ordering::SeqCst), 0, "something was dialled");
    }

    #[tokio::test]
    async fn the_administrators_loopback_port_is_dialled_and_no_other() {
        let (port, hits) = tripwire().await;
        let net = network(&[]);
        let allowed = DialPolicy {
            loopback: Some(("127.0.0.1".into(), port)),
        };
        let transport = net.transport(allowed, 1);
        let request = http::Request::get(format!("http://127.0.0.1:{port}/"))
            .body(Bytes::new())
            .unwrap();
        // The tripwire accepts and never answers: the request times out, after connecting.
        let result = transport.send(request, Duration::from_millis(300)).await;
        assert!(matches!(result, Err(SendError::Failed(_))), "{result:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
