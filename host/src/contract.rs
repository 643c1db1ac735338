//! Host-side bindings of the `cdp:connector` contract (see `wit/connector.wit`) and the rules for
//! which contract versions this host accepts.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "cdp:connector/connector",
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
    },
});

pub use exports::cdp::connector::export_destination::{
    AuthScheme, BatchReport, ConfigField, ConnectorError, ConnectorInfo, Contact, ContactField,
    ContactIssue, ErrorKind, ExportConfig, IssueKind,
};

/// The contract package this host implements.
pub const PACKAGE: &str = "cdp:connector";
/// The interface every connector must export.
pub const INTERFACE: &str = "export-destination";
/// The contract version this host was built against.
pub const VERSION: &str = "0.1.1";

/// Whether a component built for contract `version` can run on this host: same major version
/// (for 0.x, same minor), as semver compatibility goes.
pub fn is_compatible(version: &semver::Version) -> bool {
    let ours = semver::Version::parse(VERSION).expect("VERSION is semver");
    if ours.major == 0 {
        version.major == 0 && version.minor == ours.minor
    } else {
        version.major == ours.major
    }
}

/// The contract versions this host accepts, as said to users.
pub fn supported_versions() -> String {
    let ours = semver::Version::parse(VERSION).expect("VERSION is semver");
    if ours.major == 0 {
        format!("{PACKAGE}@0.{}.x", ours.minor)
    } else {
        format!("{PACKAGE}@{}.x", ours.major)
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
    fn the_same_zero_minor_is_compatible_and_other_versions_are_not() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        assert!(is_compatible(&v("0.1.0")));
        assert!(
            is_compatible(&v("0.1.7")),
            "a later patch of the contract must load"
        );
        assert!(!is_compatible(&v("0.2.0")));
        assert!(!is_compatible(&v("1.0.0")));
        assert_eq!(supported_versions(), "cdp:connector@0.1.x");
    }
}
