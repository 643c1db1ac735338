//! The authoring API: a connector implements [`Connector`], and [`export_connector!`] turns it
//! into the component's `export-destination`, with the checks every connector needs done once
//! here (typed settings, the credential check, batch sizes, declared leave actions, reports
//! that account for every contact).
//!
//! [`export_connector!`]: crate::export_connector

use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::bindings::exports::cdp::connector::export_destination::Guest;
use crate::http::{self, Response};
use crate::{BatchReport, ConnectorError, ConnectorInfo, Contact, ExportConfig};

/// A vendor connector. Only `NAME`, `CREDENTIAL_CHECK`, `Settings`, `describe` and
/// `export_batch` are required; the rest have defaults that keep the contract.
pub trait Connector {
    /// The vendor's name in messages, e.g. `Campaign Monitor`.
    const NAME: &'static str;

    /// Path (after the base URL) of a read the vendor answers only for a valid credential,
    /// e.g. `/account`. The default [`Connector::check_credential`] sends `GET` to it.
    const CREDENTIAL_CHECK: &'static str;

    /// An export's settings, read from the `config-fields` the connector declares: a struct
    /// deriving `Deserialize` with `#[serde(rename_all = "kebab-case")]`, each value a string
    /// (or a type deserialising from one). A required setting that is missing or blank is
    /// refused as `the setting `key` is required`. [`NoSettings`] when there are none.
    type Settings: DeserializeOwned;

    /// What the connector is; build it with [`crate::Description`].
    fn describe() -> ConnectorInfo;

    /// Checks that the vendor accepts the connection's credential (called when a connection
    /// is saved, with no export). The default reads [`Connector::CREDENTIAL_CHECK`].
    fn check_credential(base_url: &str) -> Result<(), ConnectorError> {
        let response = http::get(&format!("{base_url}{}", Self::CREDENTIAL_CHECK))?;
        match response.is_success() {
            true => Ok(()),
            false => Err(Self::vendor_error(&response)),
        }
    }

    /// Checks an export's settings against the vendor (that its list exists, that the fields
    /// it maps are there). Settings have been read already. The default accepts them.
    fn validate(export: &Export<Self::Settings>) -> Result<(), ConnectorError> {
        let _ = export;
        Ok(())
    }

    /// Sends one batch (1 to `max-batch-size` contacts: the SDK answers an empty batch and
    /// refuses a larger one itself). Upserts by email, never resubscribes anyone, and returns
    /// one outcome per contact ([`crate::ReportBuilder`] keeps the count).
    fn export_batch(
        export: &Export<Self::Settings>,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError>;

    /// Applies a declared leave action to a batch of leavers (the SDK refuses undeclared
    /// actions). Only connectors that declare leave actions implement it.
    fn apply_leave_action(
        export: &Export<Self::Settings>,
        action: &str,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        let _ = (export, contacts);
        Err(ConnectorError::invalid_config(format!(
            "{} has no leave action `{action}`",
            Self::NAME
        )))
    }

    /// Erases people at the vendor with its own erasure (a data-protection request). Only
    /// connectors that declare an erasure ([`crate::Description::erasure`]) implement it; the
    /// contacts carry only their email.
    fn erase_contacts(
        export: &Export<Self::Settings>,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        let _ = (export, contacts);
        Err(ConnectorError::invalid_config(format!(
            "{} cannot erase people at its vendor",
            Self::NAME
        )))
    }

    /// A vendor's error answer as a [`ConnectorError`]; the default is
    /// [`Response::error`]. Override it for vendors whose bodies carry their own codes.
    fn vendor_error(response: &Response) -> ConnectorError {
        response.error(Self::NAME)
    }
}

/// Settings of a connector that declares none.
#[derive(serde::Deserialize, Debug, Default)]
pub struct NoSettings {}

/// One export, as a connector call sees it: where the vendor is, its typed settings, and the
/// fields it maps.
#[derive(Debug)]
pub struct Export<S> {
    /// The vendor API's base URL, without a trailing slash.
    pub base_url: String,
    /// The export's settings, read.
    pub settings: S,
    /// The contact fields the export maps (`email` first).
    pub fields: Vec<String>,
    /// The leave action the export chose, if any.
    pub leave_action: Option<String>,
    /// The contact fields the connector declared; any other mapped field is a custom field.
    declared: Vec<String>,
}

impl<S> Export<S> {
    /// Whether the export maps this contact field (then a contact without a value for it
    /// means the vendor's value should be cleared).
    pub fn maps(&self, field: &str) -> bool {
        self.fields.iter().any(|f| f == field)
    }

    /// The mapped fields the connector did not declare: the vendor list's own custom fields.
    pub fn custom_fields(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .map(String::as_str)
            .filter(|f| !self.declared.iter().any(|d| d == f))
    }

    /// `base_url` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

/// Reads an export's settings into `S`; blank values count as absent.
pub fn read_settings<S: DeserializeOwned>(config: &ExportConfig) -> Result<S, ConnectorError> {
    let map: serde_json::Map<String, serde_json::Value> = config
        .settings
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.trim().to_string())))
        .collect();
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| {
        let said = e.to_string();
        // Connectors' own checks word their errors themselves; serde's name only the field.
        let message = match said.strip_prefix("missing field ") {
            Some(key) => format!("the setting {key} is required"),
            None => said,
        };
        ConnectorError::invalid_config(message)
    })
}

/// The component's `export-destination`, made of a [`Connector`]. [`crate::export_connector!`]
/// exports it; tests call it through [`crate::testing`].
pub struct Exported<T>(PhantomData<T>);

impl<T: Connector> Exported<T> {
    fn export(
        config: ExportConfig,
        info: &ConnectorInfo,
    ) -> Result<Export<T::Settings>, ConnectorError> {
        let settings = read_settings(&config)?;
        let declared = info.contact_fields.iter().map(|f| f.key.clone()).collect();
        Ok(Export {
            base_url: config.base_url.trim_end_matches('/').to_string(),
            settings,
            fields: config.fields,
            leave_action: config.leave_action,
            declared,
        })
    }

    /// The batch guard: an empty batch needs no request, a larger one than declared is refused,
    /// and what the connector reports must account for every contact.
    fn batch(
        info: &ConnectorInfo,
        contacts: &[Contact],
        send: impl FnOnce() -> Result<BatchReport, ConnectorError>,
    ) -> Result<BatchReport, ConnectorError> {
        if contacts.is_empty() {
            return Ok(BatchReport {
                created: 0,
                updated: 0,
                issues: vec![],
            });
        }
        let max = info.max_batch_size;
        if contacts.len() > max as usize {
            return Err(ConnectorError::invalid_config(format!(
                "batch of {} contacts exceeds {}'s limit of {max}",
                contacts.len(),
                T::NAME
            )));
        }
        let report = send()?;
        let accounted = report.created as usize + report.updated as usize + report.issues.len();
        if accounted != contacts.len() {
            return Err(ConnectorError::internal(format!(
                "the {} connector accounted for {accounted} of {} contacts",
                T::NAME,
                contacts.len()
            )));
        }
        Ok(report)
    }
}

impl<T: Connector> Guest for Exported<T> {
    fn describe() -> ConnectorInfo {
        T::describe()
    }

    fn validate(config: ExportConfig) -> Result<(), ConnectorError> {
        if config.settings.is_empty() {
            return T::check_credential(config.base_url.trim_end_matches('/'));
        }
        T::validate(&Self::export(config, &T::describe())?)
    }

    fn export_batch(
        config: ExportConfig,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let info = T::describe();
        let export = Self::export(config, &info)?;
        Self::batch(&info, &contacts, || T::export_batch(&export, &contacts))
    }

    fn apply_leave_action(
        config: ExportConfig,
        action: String,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let info = T::describe();
        let declared: Vec<&str> = info.leave_actions.iter().map(|a| a.id.as_str()).collect();
        if !declared.contains(&action.as_str()) {
            let has = match declared.is_empty() {
                true => "none".to_string(),
                false => declared.join(", "),
            };
            return Err(ConnectorError::invalid_config(format!(
                "{} has no leave action `{action}` (it has: {has})",
                T::NAME
            )));
        }
        let export = Self::export(config, &info)?;
        Self::batch(&info, &contacts, || {
            T::apply_leave_action(&export, &action, &contacts)
        })
    }

    fn erase_contacts(
        config: ExportConfig,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let info = T::describe();
        if info.erasure.is_none() {
            return Err(ConnectorError::invalid_config(format!(
                "{} cannot erase people at its vendor",
                T::NAME
            )));
        }
        let export = Self::export(config, &info)?;
        Self::batch(&info, &contacts, || T::erase_contacts(&export, &contacts))
    }
}

/// Exports a type implementing [`Connector`] as the component's `cdp:connector/export-destination`.
#[macro_export]
macro_rules! export_connector {
    ($connector:ty) => {
        // Only components export the contract: built for the build machine (native tests), a
        // library carries no export symbols (their names do not link there).
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __CdpConnectorExported = $crate::Exported<$connector>;
            $crate::bindings::export_raw!(__CdpConnectorExported);
        };
    };
}
