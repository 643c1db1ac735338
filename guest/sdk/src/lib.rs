//! What a connector author builds on.
//!
//! A connector is a WASI 0.2 component that exports `cdp:connector/export-destination` (the
//! contract, `wit/connector.wit`, ships inside this crate). An author implements [`Connector`]
//! (typed settings, a description built with [`Description`], the batch call) and exports it
//! with [`export_connector!`]; the SDK does the parts every connector needs the same way: the
//! credential check, reading settings, refusing oversized batches, checking that a report
//! accounts for every contact, mapping vendor errors ([`http::Response::error`]).
//! [`testing`] runs a connector natively under `cargo test`, its requests answered by a script.
//!
//! ```ignore
//! use cdp_connector_sdk::*;
//! struct MyVendor;
//! impl Connector for MyVendor { /* NAME, CREDENTIAL_CHECK, Settings, describe, export_batch */ }
//! export_connector!(MyVendor);
//! ```
//!
//! Connectors never handle credentials: the host adds them to requests on the way out.

pub mod connector;
pub mod description;
pub mod http;
pub mod report;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "connector",
        with: {
            "wasi:http/outgoing-handler@0.2.12": wasi::http::outgoing_handler,
            "wasi:http/types@0.2.12": wasi::http::types,
            "wasi:io/poll@0.2.12": wasi::io::poll,
            "wasi:io/streams@0.2.12": wasi::io::streams,
            "wasi:io/error@0.2.12": wasi::io::error,
            "wasi:clocks/monotonic-clock@0.2.12": wasi::clocks::monotonic_clock,
        },
        pub_export_macro: true,
        export_macro_name: "export_raw",
        default_bindings_module: "cdp_connector_sdk::bindings",
    });
}

/// The contract's generated interface, for components that must answer the host's calls
/// exactly as they come (test components that break the contract on purpose). Connectors use
/// [`Connector`] instead.
pub mod raw {
    pub use crate::bindings::export_raw as export;
    pub use crate::bindings::exports::cdp::connector::export_destination::Guest;
}

pub use bindings::exports::cdp::connector::export_destination::{
    AuthScheme, BatchReport, ConfigField, ConnectorError, ConnectorInfo, Contact, ContactField,
    ContactIssue, ErrorKind, ExportConfig, HeaderAuth, IssueKind, LeaveAction, RateWindow,
    RequestClass,
};
pub use connector::{Connector, Export, Exported, NoSettings};
pub use description::Description;
pub use report::ReportBuilder;

/// The contract version this SDK implements.
pub const CONTRACT_VERSION: &str = "0.3.0";

impl AuthScheme {
    /// The secret in the header `name`, after `prefix` (e.g. `api-key` with no prefix, or
    /// `Authorization` with `Klaviyo-API-Key `).
    pub fn header(name: &str, prefix: &str) -> AuthScheme {
        AuthScheme::Header(HeaderAuth {
            name: name.into(),
            prefix: prefix.into(),
        })
    }
}

impl Contact {
    /// A contact with only an email address.
    pub fn new(email: &str) -> Contact {
        Contact {
            email: email.into(),
            first_name: None,
            last_name: None,
            attributes: vec![],
        }
    }

    /// With a first and last name.
    pub fn with_name(mut self, first: &str, last: &str) -> Contact {
        self.first_name = Some(first.into());
        self.last_name = Some(last.into());
        self
    }

    /// With a mapped attribute.
    pub fn with_attribute(mut self, key: &str, value: &str) -> Contact {
        self.attributes.push((key.into(), value.into()));
        self
    }
}

impl ExportConfig {
    /// The value of a setting, or an `invalid-config` error naming it.
    pub fn require(&self, key: &str) -> Result<&str, ConnectorError> {
        self.get(key)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                ConnectorError::invalid_config(format!("the setting `{key}` is required"))
            })
    }

    /// The value of a setting, if the export gave one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The first of `wanted` (fields an export maps to the vendor's list) that none of `known` (the
/// fields the list has) matches by `same(known, wanted)`, with `known` in words for the error
/// message ("none" when the list has none).
pub fn missing_field<'a>(
    wanted: &[&'a str],
    known: &[&str],
    same: impl Fn(&str, &str) -> bool,
) -> Option<(&'a str, String)> {
    let missing = wanted.iter().find(|w| !known.iter().any(|k| same(k, w)))?;
    let listed = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    Some((missing, listed))
}

impl ContactField {
    /// A contact field to declare in `describe`; `max_length` is the longest value the vendor
    /// takes, in characters (0: no published limit).
    pub fn new(key: &str, label: &str, required: bool, max_length: u32) -> ContactField {
        ContactField {
            key: key.into(),
            label: label.into(),
            required,
            max_length,
        }
    }
}

/// The longest email address SMTP carries (RFC 5321); no vendor takes a longer one.
pub const MAX_EMAIL_LENGTH: u32 = 254;

impl LeaveAction {
    /// A leave action to declare in `describe`.
    pub fn new(id: &str, label: &str, help: &str, reversible: bool) -> LeaveAction {
        LeaveAction {
            id: id.into(),
            label: label.into(),
            help: help.into(),
            reversible,
            batch_size: 0,
        }
    }
}

impl ConnectorError {
    /// A failure with the given kind and message; retryable only for throttling.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ConnectorError {
            kind,
            message: message.into(),
            vendor_code: None,
            retryable: matches!(kind, ErrorKind::RateLimited),
        }
    }

    /// The export's settings are missing or malformed.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }

    /// The connector could not make sense of something (e.g. a vendor response).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Attaches the vendor's error code.
    pub fn with_code(mut self, code: impl ToString) -> Self {
        self.vendor_code = Some(code.to_string());
        self
    }

    /// Marks whether the same call may succeed if sent again.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }
}

impl Contact {
    /// First and last name joined by a space, or `None` when the contact has neither.
    pub fn full_name(&self) -> Option<String> {
        let mut name = String::new();
        let parts = [self.first_name.as_deref(), self.last_name.as_deref()];
        for part in parts.into_iter().flatten().map(str::trim) {
            if part.is_empty() {
                continue;
            }
            if !name.is_empty() {
                name.push(' ');
            }
            name.push_str(part);
        }
        (!name.is_empty()).then_some(name)
    }

    /// A mapped attribute by key.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}
