//! The library's refusals in the command line's own terms: what is missing says which flag,
//! variable or command gives it; what is closed to a contributor says so.

use connector_host::failure::Missing;

/// `error` as one line, as anyhow's `{:#}` writes it, with the library's neutral words for
/// something missing replaced by the command line's.
pub fn error(error: &anyhow::Error) -> String {
    let mut parts = vec![];
    for cause in error.chain() {
        if let Some(missing) = cause.downcast_ref::<Missing>() {
            parts.push(missing_words(missing));
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ")
}

fn missing_words(missing: &Missing) -> String {
    match missing {
        Missing::MasterKey => format!(
            "{missing}; set {}, or create a key file with `connector-host key generate` and point --master-key-file at it",
            connector_host::workspace::MASTER_KEY_ENV
        ),
        Missing::ProfileSource => format!(
            "{missing}; set one with `connector-host settings set profiles FILE` and `settings set memberships FILE`"
        ),
        Missing::PrivacyNotice { .. } => format!("{missing}; pass --accept-privacy-notice"),
        Missing::IrreversibleConsent { .. } => {
            format!("{missing}; confirm it with --confirm-irreversible")
        }
        Missing::ExportsRemoved {
            connection,
            exports,
        } => {
            let (which, those, them) = Missing::exports_words(exports);
            format!(
                "connection `{connection}` is used by {which}; remove {those} first, or give --with-exports to remove {them} too"
            )
        }
        Missing::Approval { connector, .. } => format!(
            "{missing} (`connector-host plugins` shows what it asks for; `connector-host plugins approve {connector}` approves it)"
        ),
        Missing::OAuthApp { connector } => format!(
            "no OAuth application is set for connector `{connector}`: an administrator sets one with `connector-host oauth-app set {connector}`"
        ),
    }
}
