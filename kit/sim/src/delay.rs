//! A TCP proxy on loopback that gives what crosses it a real network's round-trip time: every
//! chunk waits half the round trip in each direction, and a new connection's first bytes wait
//! one round trip more, as TCP's handshake would make them. TLS handshakes through it pay
//! their round trips too. For benchmarks and tests where `tc netem` is not available.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A delaying proxy to one target; stops when dropped.
pub struct DelayProxy {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards to `target` with round trip `rtt`.
    pub async fn start(target: SocketAddr, rtt: Duration) -> anyhow::Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let accepting = stop.clone();
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = accepting.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                };
                let stop = accepting.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let half = rtt / 2;
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = async {
                            tokio::join!(
                                pipe(client_read, server_write, half, rtt),
                                pipe(server_read, client_write, half, Duration::ZERO),
                            )
                        } => {}
                    }
                });
            }
        });
        Ok(DelayProxy { addr, stop })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read (the first `first_extra`
/// later still), in order; then closes `to`'s writing side.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    first_extra: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reading = async move {
        let mut extra = first_extra;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + delay + std::mem::take(&mut extra);
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // The end of the stream travels as late as the data before it.
        let _ = tx.send((Instant::now() + delay, Vec::new()));
    };
    let writing = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if bytes.is_empty() {
                break;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}
