//! Records a run's settled pieces in its journal on a thread of its own, in order, so that the
//! run keeps sending while the database writes. A piece counts (in the report and the progress)
//! only once its record is durable; a piece handed over but not yet recorded is, like a batch in
//! flight, what a crash may make the next attempt send again.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::counts::RunCounts;
use super::eta::TimeLeft;
use super::report::Figures;
use super::settle::Piece;
use super::sync::{RunJournal, Settlement};
use crate::broker::HttpStats;

/// A piece once recorded, or why recording failed (nothing after it is recorded).
pub(super) type Recorded = Result<Piece, String>;

pub(super) struct Recorder {
    pieces: Option<mpsc::Sender<Piece>>,
    recorded: mpsc::UnboundedReceiver<Recorded>,
    /// Pieces handed over and not yet taken back.
    pending: usize,
}

impl Recorder {
    /// Starts the writer; at most `capacity` pieces wait for it before [`Recorder::submit`]
    /// waits in turn.
    pub(super) fn start(
        journal: Arc<dyn RunJournal>,
        capacity: usize,
        stats: Arc<HttpStats>,
        started: Instant,
        expected: Arc<TimeLeft>,
    ) -> Recorder {
        let (pieces, mut to_write) = mpsc::channel::<Piece>(capacity.max(1));
        let (done, recorded) = mpsc::unbounded_channel();
        tokio::task::spawn_blocking(move || {
            // The attempt's counts so far, recorded with each piece.
            let mut counts = RunCounts::default();
            while let Some(piece) = to_write.blocking_recv() {
                counts.add(&piece.counts);
                let settled = journal.settle(&Settlement {
                    contacts: &piece.contacts,
                    issues: &piece.issues,
                    counts: &counts,
                    figures: Figures {
                        requests: stats.requests(),
                        retries: stats.retries(),
                        batches: counts.batches,
                        duration: started.elapsed(),
                        left: expected.get(),
                    },
                });
                let failed = settled.is_err();
                let _ = done.send(settled.map(|()| piece).map_err(|e| format!("{e:#}")));
                if failed {
                    break;
                }
            }
        });
        Recorder {
            pieces: Some(pieces),
            recorded,
            pending: 0,
        }
    }

    /// Hands a piece to the writer, waiting while it is `capacity` pieces behind. A piece the
    /// stopped writer cannot take is never recorded: its failure is already on its way.
    pub(super) async fn submit(&mut self, piece: Piece) {
        if let Some(pieces) = &self.pieces
            && pieces.send(piece).await.is_ok()
        {
            self.pending += 1;
        }
    }

    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// The next piece recorded (or the failure), waiting for it; `None` when none is pending.
    pub(super) async fn next(&mut self) -> Option<Recorded> {
        if self.pending == 0 {
            return None;
        }
        let recorded = self.recorded.recv().await;
        self.pending = match &recorded {
            Some(Ok(_)) => self.pending - 1,
            // The writer stopped: what it did not record never will be.
            _ => 0,
        };
        Some(recorded.unwrap_or_else(|| Err("the journal writer stopped".into())))
    }

    /// The next piece recorded, if one is ready.
    pub(super) fn try_next(&mut self) -> Option<Recorded> {
        if self.pending == 0 {
            return None;
        }
        let recorded = self.recorded.try_recv().ok()?;
        self.pending = if recorded.is_ok() {
            self.pending - 1
        } else {
            0
        };
        Some(recorded)
    }
}
