//! A TCP relay on loopback whose link a test can cut and restore: cut, every connection
//! through it is dropped and new ones are closed at once (as a peer that went away); restored,
//! connections pass again. Stands between one process and a server (PostgreSQL) to fail that
//! process's connections alone.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A relay to one target; stops when dropped.
pub struct CutRelay {
    addr: SocketAddr,
    stop: CancellationToken,
    /// Cancelled when the link is cut; replaced when it is restored.
    link: Arc<Mutex<CancellationToken>>,
}

impl CutRelay {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<CutRelay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let link = Arc::new(Mutex::new(CancellationToken::new()));
        let (accepting, links) = (stop.clone(), link.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = accepting.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                };
                let link = links.lock().unwrap().clone();
                if link.is_cancelled() {
                    // Cut: the connection is closed as soon as it opens.
                    drop(client);
                    continue;
                }
                let stop = accepting.clone();
                tokio::spawn(relay(client, target, link, stop));
            }
        });
        Ok(CutRelay { addr, stop, link })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection and refuses new ones until [`CutRelay::restore`].
    pub fn cut(&self) {
        self.link.lock().unwrap().cancel();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        *self.link.lock().unwrap() = CancellationToken::new();
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    link: CancellationToken,
    stop: CancellationToken,
) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = link.cancelled() => {}
        _ = stop.cancelled() => {}
    }
}
