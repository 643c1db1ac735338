//! Bodies the broker holds: read with a size cap, against the run's byte budget, with a
//! deadline on each wait, so a connector can neither make the host buffer without bound nor
//! hold a request open by stalling.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use wasmtime_wasi_http::Error as HttpError;

use super::limits::ByteBudget;

/// Why a body was not read whole.
#[derive(Debug)]
pub enum BodyError {
    /// It grew past `limit` bytes (or declared it would).
    TooLarge { limit: usize },
    /// The run's budget of buffered bytes was spent.
    OverBudget { budget: usize },
    /// No data came within the deadline.
    Stalled(Duration),
    /// The stream itself failed.
    Failed(HttpError),
}

/// A body read whole, as the pieces it arrived in (never copied), with the share of the byte
/// budget it holds.
pub struct HeldBytes {
    chunks: VecDeque<Bytes>,
    budget: Option<OwnedSemaphorePermit>,
}

impl HeldBytes {
    /// The body in one piece (a request body, sent again on each attempt), and its share of
    /// the budget, to hold for as long as the body is kept.
    pub fn into_bytes(self) -> (Bytes, Option<OwnedSemaphorePermit>) {
        let whole = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks[0].clone(),
            _ => {
                let mut whole = BytesMut::with_capacity(self.chunks.iter().map(Bytes::len).sum());
                for chunk in &self.chunks {
                    whole.extend_from_slice(chunk);
                }
                whole.freeze()
            }
        };
        (whole, self.budget)
    }
}

/// Reads `body` whole, refusing it once it exceeds `limit` or the budget, or when `deadline`
/// passes without the next piece. Nothing is kept of a refused body.
pub async fn read<B>(
    body: B,
    limit: usize,
    budget: &ByteBudget,
    deadline: Duration,
) -> Result<HeldBytes, BodyError>
where
    B: Body<Data = Bytes, Error = HttpError> + Unpin,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = body;
    let mut held = None;
    let (mut chunks, mut len) = (VecDeque::new(), 0);
    loop {
        let frame = match tokio::time::timeout(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled(deadline)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Failed(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing the broker keeps
        };
        if len + data.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        if !budget.take(data.len(), &mut held) {
            return Err(BodyError::OverBudget {
                budget: budget.limit(),
            });
        }
        len += data.len();
        if !data.is_empty() {
            chunks.push_back(data);
        }
    }
    Ok(HeldBytes {
        chunks,
        budget: held,
    })
}

/// An answer handed to the connector: its bytes, and its share of the byte budget until the
/// connector has read it (or dropped it).
#[derive(Debug)]
pub struct HeldBody {
    chunks: VecDeque<Bytes>,
    /// Given back as the connector reads the last piece.
    budget: Option<OwnedSemaphorePermit>,
}

impl HeldBody {
    pub fn new(held: HeldBytes) -> HeldBody {
        HeldBody {
            chunks: held.chunks,
            budget: held.budget,
        }
    }
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let next = self.chunks.pop_front();
        if self.chunks.is_empty() {
            self.budget = None;
        }
        Poll::Ready(next.map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn full(bytes: &'static [u8]) -> impl Body<Data = Bytes, Error = HttpError> + Unpin {
        Full::new(Bytes::from_static(bytes)).map_err(|never| match never {})
    }

    #[tokio::test]
    async fn a_body_is_read_within_its_cap_and_the_budget() {
        let budget = ByteBudget::new(10);
        let held = read(full(b"hello"), 8, &budget, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(held.chunks, ["hello"]);
        assert!(matches!(
            read(full(b"hello world"), 8, &budget, Duration::from_secs(1)).await,
            Err(BodyError::TooLarge { limit: 8 })
        ));
        // Five bytes are still held by the first body.
        assert!(matches!(
            read(full(b"1234567"), 8, &budget, Duration::from_secs(1)).await,
            Err(BodyError::OverBudget { budget: 10 })
        ));
        drop(held);
        assert!(
            read(full(b"1234567"), 8, &budget, Duration::from_secs(1))
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        /// A body whose next piece never comes.
        struct Stalled;
        impl Body for Stalled {
            type Data = Bytes;
            type Error = HttpError;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
                Poll::Pending
            }
        }
        let result = read(Stalled, 8, &ByteBudget::new(10), Duration::from_secs(3)).await;
        assert!(matches!(result, Err(BodyError::Stalled(d)) if d == Duration::from_secs(3)));
    }
}
