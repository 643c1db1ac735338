//! Host side of the `cdp:connector` contract: one module per supported version, each with its
//! bindings and its calls, and the rules for which versions this host accepts. The newest
//! version's types are the host's model; an older version converts to and from them, so the
//! next version is one more module and one more arm in [`ConnectorPre`] and [`Connector`].

mod v0_1;
mod v0_2;
mod v0_3;

use anyhow::Result;
use wasmtime::Store;
use wasmtime::component::InstancePre;

pub use v0_3::{
    AuthScheme, BatchReport, ConfigField, ConnectorError, ConnectorInfo, Contact, ContactField,
    ContactIssue, ErrorKind, ExportConfig, HeaderAuth, IssueKind, LeaveAction, RateWindow,
    RequestClass,
};

use crate::sandbox::PluginState;

/// The contract package this host implements.
pub const PACKAGE: &str = "cdp:connector";
/// The interface every connector must export.
pub const INTERFACE: &str = "export-destination";
/// The newest contract version this host was built against.
pub const VERSION: &str = "0.3.0";
/// The version that introduced leave actions, custom fields and `apply-leave-action`.
pub const LEAVE_ACTIONS_SINCE: semver::Version = semver::Version::new(0, 2, 0);
/// The version that introduced erasure, header credentials and rate windows.
pub const ERASURE_SINCE: semver::Version = semver::Version::new(0, 3, 0);

/// The `0.x` minor versions this host loads, oldest first.
const SUPPORTED_MINORS: [u64; 3] = [1, 2, 3];

/// Whether a component built for contract `version` can run on this host: a 0.x minor version
/// it has bindings for (any patch of it), as semver compatibility goes.
pub fn is_compatible(version: &semver::Version) -> bool {
    version.major == 0 && SUPPORTED_MINORS.contains(&version.minor)
}

/// The contract versions this host accepts, as said to users.
pub fn supported_versions() -> String {
    let listed: Vec<String> = SUPPORTED_MINORS
        .iter()
        .map(|minor| format!("{PACKAGE}@0.{minor}.x"))
        .collect();
    match listed.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => listed.join(""),
    }
}

/// A compiled component linked against the sandbox, ready to instantiate, with the bindings of
/// the contract version it was built for.
pub(crate) enum ConnectorPre {
    V0_1(v0_1::Pre),
    V0_2(v0_2::Pre),
    V0_3(v0_3::Pre),
}

/// One instance of a connector.
pub(crate) enum Connector {
    V0_1(v0_1::Instance),
    V0_2(v0_2::Instance),
    V0_3(v0_3::Instance),
}

impl ConnectorPre {
    /// Picks the bindings of `version` (already checked with [`is_compatible`]).
    pub(crate) fn new(
        version: &semver::Version,
        pre: InstancePre<PluginState>,
    ) -> Result<ConnectorPre> {
        Ok(match version.minor {
            1 => ConnectorPre::V0_1(v0_1::Pre::new(pre)?),
            2 => ConnectorPre::V0_2(v0_2::Pre::new(pre)?),
            _ => ConnectorPre::V0_3(v0_3::Pre::new(pre)?),
        })
    }

    pub(crate) async fn instantiate(
        &self,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Connector> {
        Ok(match self {
            ConnectorPre::V0_1(pre) => Connector::V0_1(pre.instantiate(store).await?),
            ConnectorPre::V0_2(pre) => Connector::V0_2(pre.instantiate(store).await?),
            ConnectorPre::V0_3(pre) => Connector::V0_3(pre.instantiate(store).await?),
        })
    }
}

impl Connector {
    pub(crate) async fn describe(
        &self,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<ConnectorInfo> {
        match self {
            Connector::V0_1(c) => c.describe(store).await,
            Connector::V0_2(c) => c.describe(store).await,
            Connector::V0_3(c) => c.describe(store).await,
        }
    }

    pub(crate) async fn validate(
        &self,
        store: &mut Store<PluginState>,
        config: &ExportConfig,
    ) -> wasmtime::Result<Result<(), ConnectorError>> {
        match self {
            Connector::V0_1(c) => c.validate(store, config).await,
            Connector::V0_2(c) => c.validate(store, config).await,
            Connector::V0_3(c) => c.validate(store, config).await,
        }
    }

    pub(crate) async fn export_batch(
        &self,
        store: &mut Store<PluginState>,
        config: &ExportConfig,
        contacts: &[Contact],
    ) -> wasmtime::Result<Result<BatchReport, ConnectorError>> {
        match self {
            Connector::V0_1(c) => c.export_batch(store, config, contacts).await,
            Connector::V0_2(c) => c.export_batch(store, config, contacts).await,
            Connector::V0_3(c) => c.export_batch(store, config, contacts).await,
        }
    }

    /// Applies a leave action; a connector built before 0.2.0 has none (the host refuses such
    /// exports when they are saved, so reaching this is a host bug, reported as an error).
    pub(crate) async fn apply_leave_action(
        &self,
        store: &mut Store<PluginState>,
        config: &ExportConfig,
        action: &str,
        contacts: &[Contact],
    ) -> wasmtime::Result<Result<BatchReport, ConnectorError>> {
        match self {
            Connector::V0_1(_) => Err(wasmtime::Error::msg(
                "a connector built for contract 0.1 has no leave actions",
            )),
            Connector::V0_2(c) => c.apply_leave_action(store, config, action, contacts).await,
            Connector::V0_3(c) => c.apply_leave_action(store, config, action, contacts).await,
        }
    }

    /// Erases people at the vendor; a connector built before 0.3.0 cannot (the host asks only
    /// connectors that declare an erasure, so reaching this is a host bug, reported as an error).
    pub(crate) async fn erase_contacts(
        &self,
        store: &mut Store<PluginState>,
        config: &ExportConfig,
        contacts: &[Contact],
    ) -> wasmtime::Result<Result<BatchReport, ConnectorError>> {
        match self {
            Connector::V0_1(_) | Connector::V0_2(_) => Err(wasmtime::Error::msg(
                "a connector built before contract 0.3 cannot erase",
            )),
            Connector::V0_3(c) => c.erase_contacts(store, config, contacts).await,
        }
    }
}

impl AuthScheme {
    /// How the credential goes to the vendor, in words (what an administrator approves).
    pub fn describe(&self) -> String {
        let shown = |s: &str| crate::text::clean(s, 64);
        match self {
            AuthScheme::BasicSecretAsUser(password) => format!(
                "HTTP Basic: the credential as the user name, `{}` as the password",
                shown(password)
            ),
            AuthScheme::BasicSecretAsPassword(user) => format!(
                "HTTP Basic: `{}` as the user name, the credential as the password",
                shown(user)
            ),
            AuthScheme::Bearer => "`Authorization: Bearer <credential>`".into(),
            AuthScheme::Header(header) => format!(
                "`{}: {}<credential>`",
                shown(&header.name),
                shown(&header.prefix)
            ),
        }
    }
}

impl RateWindow {
    /// The window in words: "120 requests a minute", "5 requests a minute for POST /batch".
    pub fn describe(&self) -> String {
        crate::broker::Window::from(self).describe()
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not found",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Vendor => "vendor error",
            ErrorKind::Transport => "transport error",
            ErrorKind::Internal => "connector error",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_minors_load_at_any_patch_and_others_are_refused() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        for ok in [
            "0.1.0", "0.1.1", "0.1.7", "0.2.0", "0.2.3", "0.3.0", "0.3.2",
        ] {
            assert!(is_compatible(&v(ok)), "{ok}");
        }
        for refused in ["0.0.9", "0.4.0", "1.0.0", "1.2.0"] {
            assert!(!is_compatible(&v(refused)), "{refused}");
        }
        assert_eq!(
            supported_versions(),
            "cdp:connector@0.1.x, cdp:connector@0.2.x and cdp:connector@0.3.x"
        );
    }
}
