//! Exit codes, one per outcome a script tells apart (README.md lists them).

use std::process::ExitCode;

use connector_host::failure::{self, AlreadyRunning, Unavailable};
use connector_host::{RunReport, text};

/// Done as asked.
pub const SUCCESS: u8 = 0;
/// A run failed, or the vendor, the network or a connector did: trying again later may work.
pub const FAILED: u8 = 1;
/// The command cannot be carried out as given: its arguments, names, settings, permissions
/// or credentials (clap's own usage errors are 2 as well).
pub const USAGE: u8 = 2;
/// The run was stopped by a signal before the end; the next run continues it.
pub const INTERRUPTED: u8 = 3;
/// The export already has a run under way.
pub const ALREADY_RUNNING: u8 = 4;
/// The run succeeded, but some contacts were not delivered (only with
/// `--fail-on-undelivered`).
pub const UNDELIVERED: u8 = 5;

/// The exit code of a run that produced a report. A failed run's reason goes to stderr as
/// well, where a script looks for errors, besides the summary on stdout.
pub fn of_report(report: &RunReport, fail_on_undelivered: bool) -> ExitCode {
    use connector_host::RunStatus;
    ExitCode::from(match &report.status {
        RunStatus::Succeeded if fail_on_undelivered && !report.reasons.is_empty() => UNDELIVERED,
        RunStatus::Succeeded => SUCCESS,
        RunStatus::Failed(reason) => {
            let reason = text::clean(reason, 4 * text::MAX_MESSAGE_CHARS);
            eprintln!("error: the run failed: {reason}");
            FAILED
        }
        RunStatus::Interrupted => INTERRUPTED,
    })
}

/// The exit code of a command that ended with `error`.
pub fn of_error(error: &anyhow::Error) -> ExitCode {
    ExitCode::from(if failure::is::<AlreadyRunning>(error) {
        ALREADY_RUNNING
    } else if failure::is::<Unavailable>(error) {
        FAILED
    } else {
        USAGE
    })
}
