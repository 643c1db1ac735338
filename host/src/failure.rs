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

/// A connection, or an export or run on one, that the access rule closes to the actor. The
/// CLI says why; the API answers as if it did not exist, so that a contributor learns nothing
/// of what is closed to them.
#[derive(Debug)]
pub struct Closed {
    /// Who asked.
    pub actor: String,
    /// The connection closed to them.
    pub connection: String,
    /// What was asked for, as "there is no ..." ends: "connection named `acme`", "run 12".
    pub subject: String,
}

impl Closed {
    /// The same refusal, about what was asked for through the connection.
    pub fn about(mut self, subject: String) -> Closed {
        self.subject = subject;
        self
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} acts as a contributor, and connection `{}` is open to administrators only",
            self.actor, self.connection
        )
    }
}

impl std::error::Error for Closed {}

/// What the asker must still give or confirm for the request to go through, as a value: each
/// front end words it with its own means (a flag of the CLI, a member of the API's JSON, a box
/// of the console). Its `Display` is a sentence without any of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// The master key that unseals the stored credentials.
    MasterKey,
    /// A profile source, named by the settings or given by the embedding platform.
    ProfileSource,
    /// The data-privacy notice, accepted for the connection being saved.
    PrivacyNotice { connection: String },
    /// Consent to the irreversible leave action of the export being saved (`done`: "saved"
    /// or "changed").
    IrreversibleConsent {
        export: String,
        action: String,
        help: String,
        done: &'static str,
    },
    /// Consent to removing, with the connection, the exports that use it.
    ExportsRemoved {
        connection: String,
        exports: Vec<String>,
    },
    /// The OAuth application of a connector, which an administrator sets.
    OAuthApp { connector: String },
    /// An administrator's approval of the connector as its file is now (`changed`: how it
    /// differs from what was approved, when it was).
    Approval {
        connector: String,
        changed: Option<String>,
    },
}

impl Missing {
    /// "export `a`" or "exports `a`, `b`", with "that export"/"those exports" and "it"/"them".
    pub fn exports_words(exports: &[String]) -> (String, &'static str, &'static str) {
        let names = exports.join(", ");
        match exports.len() {
            1 => (format!("export {names}"), "that export", "it"),
            _ => (format!("exports {names}"), "those exports", "them"),
        }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::MasterKey => f.write_str(
                "no master key: the stored credentials cannot be unsealed without the key they were sealed with",
            ),
            Missing::ProfileSource => f.write_str(
                "no profile source: the settings name no profile data (set `profiles` and `memberships` to files, or `profiles` to a PostgreSQL URL)",
            ),
            Missing::PrivacyNotice { connection } => write!(
                f,
                "connection `{connection}` was not saved: the data-privacy notice must be accepted (exported profiles leave the platform's compliance boundary for the vendor's)"
            ),
            Missing::IrreversibleConsent {
                export,
                action,
                help,
                done,
            } => write!(
                f,
                "export `{export}` was not {done}: its leave action `{action}` is irreversible ({help}); it must be confirmed to save the export"
            ),
            Missing::ExportsRemoved {
                connection,
                exports,
            } => {
                let (which, those, them) = Missing::exports_words(exports);
                write!(
                    f,
                    "connection `{connection}` is used by {which}; remove {those} first, or remove {them} with the connection"
                )
            }
            Missing::OAuthApp { connector } => write!(
                f,
                "no OAuth application is set for connector `{connector}`: an administrator must set one"
            ),
            Missing::Approval {
                connector,
                changed: None,
            } => write!(
                f,
                "connector `{connector}` has not been approved: an administrator must review what it asks for and approve it"
            ),
            Missing::Approval {
                connector,
                changed: Some(how),
            } => write!(
                f,
                "connector `{connector}` {how}; an administrator must review it and approve it again"
            ),
        }
    }
}

impl std::error::Error for Missing {}

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
