//! Errors a caller tells apart from mistakes of configuration, e.g. to choose an exit code or
//! to try again later. Everything else the host returns is about what it was asked to do.

use std::fmt;

/// The vendor, the network on the way to it, or the connector failed. The export's
/// configuration may be right; trying again later may succeed.
#[derive(Debug)]
pub struct Unavailable(pub String);

/// The export already has a run under way (one at a time per export, across processes).
#[derive(Debug)]
pub struct AlreadyRunning(pub String);

/// What was asked for does not exist (a connection, an export, a run, a connector).
#[derive(Debug)]
pub struct NotFound(pub String);

/// The actor's role does not allow what was asked.
#[derive(Debug)]
pub struct Forbidden(pub String);

/// A name is taken already.
#[derive(Debug)]
pub struct Conflict(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for AlreadyRunning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! message_error {
    ($($kind:ident),*) => {$(
        impl fmt::Display for $kind {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for $kind {}
    )*};
}
message_error!(NotFound, Forbidden, Conflict);

impl std::error::Error for Unavailable {}
impl std::error::Error for AlreadyRunning {}

/// Whether `error`, or what caused it, is one of `E`.
pub fn is<E: std::error::Error + Send + Sync + 'static>(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<E>())
}
