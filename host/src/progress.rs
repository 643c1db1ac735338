//! Progress for people: a bar on a terminal, a log line every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::run::Progress;

/// Shows a run's progress on stderr.
pub struct ConsoleProgress {
    bar: Option<ProgressBar>,
    done: AtomicU64,
    total: AtomicU64,
    last_line: Mutex<Instant>,
    /// The run's latest estimate of the time its phase has left (`, about 4 min left`).
    left: Mutex<String>,
}

const LOG_EVERY: Duration = Duration::from_secs(2);

impl ConsoleProgress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new(label: &str) -> ConsoleProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::hidden();
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:40}] {pos}/{len} profiles ({per_sec}{msg})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        ConsoleProgress {
            bar,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last_line: Mutex::new(Instant::now()),
            left: Mutex::new(String::new()),
        }
    }
}

impl Progress for ConsoleProgress {
    fn begin(&self, total: Option<u64>) {
        self.total.store(total.unwrap_or(0), Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(total.unwrap_or(0));
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        } else {
            eprintln!(
                "sending {} profiles",
                total.map_or("?".into(), |t| t.to_string())
            );
        }
    }

    fn advance(&self, profiles: u64) {
        let done = self.done.fetch_add(profiles, Ordering::Relaxed) + profiles;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let mut last = self.last_line.lock().unwrap();
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            eprintln!(
                "progress: {done}/{} profiles{}",
                self.total.load(Ordering::Relaxed),
                self.left.lock().unwrap()
            );
        }
    }

    fn leaving(&self, leavers: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(leavers, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:40}] {pos}/{len} leavers settled ({per_sec}{msg})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_length(leavers);
            bar.set_position(0);
        } else {
            eprintln!("settling {leavers} contacts who left the segment");
        }
    }

    fn advance_leaving(&self, leavers: u64) {
        let done = self.done.fetch_add(leavers, Ordering::Relaxed) + leavers;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let mut last = self.last_line.lock().unwrap();
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            eprintln!(
                "progress: {done}/{} leavers settled{}",
                self.total.load(Ordering::Relaxed),
                self.left.lock().unwrap()
            );
        }
    }

    fn expect(&self, left: Duration) {
        let words = format!(", about {} left", crate::run::duration_words(left));
        if let Some(bar) = &self.bar {
            bar.set_message(words.clone());
        }
        let mut said = self.left.lock().unwrap();
        if said.is_empty() && self.bar.is_none() {
            eprintln!(
                "expected to take about {}",
                crate::run::duration_words(left)
            );
        }
        *said = words;
    }

    fn end(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
