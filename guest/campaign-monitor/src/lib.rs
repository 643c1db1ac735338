//! Campaign Monitor (createsend API v3.3) export connector.
//!
//! Sends contacts with the bulk import endpoint (`POST /subscribers/{list}/import.json`, at most
//! 1,000 a call), joins first and last name into the subscriber name, always sends
//! `Resubscribe: false` so people who left stay out, and turns the vendor's partial-failure answer
//! (HTTP 400, Code 210, `ResultData`) into per-contact outcomes. Contract: shared/vendors/campaign-monitor.md.

use cdp_connector_sdk::http::{self, Response};
use cdp_connector_sdk::*;
use serde::{Deserialize, Serialize};

struct CampaignMonitor;

/// Largest import Campaign Monitor accepts (more gives error 209).
const MAX_BATCH: u32 = 1000;
/// Per-row failure codes that mean "kept out on purpose": in suppression list, deleted,
/// unsubscribed, bounced, unconfirmed.
const SUPPRESSED_CODES: [i64; 5] = [204, 205, 206, 207, 208];
/// Error code Campaign Monitor uses for an unknown list ID (with HTTP 400 or 401).
const INVALID_LIST_ID: i64 = 101;
/// Error code of an import that partly failed; the good rows were imported.
const IMPORT_HAD_FAILURES: i64 = 210;

impl Connector for CampaignMonitor {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            id: "campaign-monitor".into(),
            display_name: "Campaign Monitor".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            default_base_url: "https://api.createsend.com/api/v3.3".into(),
            hosts: vec!["api.createsend.com".into()],
            auth: AuthScheme::BasicSecretAsUser("x".into()),
            config_fields: vec![
                ConfigField {
                    key: "list-id".into(),
                    label: "List ID".into(),
                    help: "The API list ID (32 hex characters), shown on the list's \"change name/type\" page.".into(),
                    required: true,
                },
                ConfigField {
                    key: "consent-to-track".into(),
                    label: "Consent to track".into(),
                    help: "Yes, No or Unchanged (default): the tracking consent recorded for contacts without a mapped consent-to-track field.".into(),
                    required: false,
                },
            ],
            contact_fields: vec![
                field("email", "Email", true),
                field("first-name", "First name", false),
                field("last-name", "Last name", false),
                field("consent-to-track", "Consent to track (yes/no)", false),
            ],
            max_batch_size: MAX_BATCH,
            // Campaign Monitor publishes no concurrency or rate limit for imports (it throttles
            // with 429, which the host's broker rides out).
            max_concurrent_requests: 0,
            max_requests_per_second: 0,
        }
    }

    fn validate(config: ExportConfig) -> Result<(), ConnectorError> {
        if config.settings.is_empty() {
            // A connection being saved: reading the account's clients proves the credential.
            let response = http::get(&format!("{}/clients.json", config.base_url))?;
            return match response.is_success() {
                true => Ok(()),
                false => Err(vendor_error(&response, "")),
            };
        }
        let settings = Settings::from(&config)?;
        let response = http::get(&format!(
            "{}/lists/{}.json",
            config.base_url, settings.list_id
        ))?;
        if response.is_success() {
            return Ok(());
        }
        Err(vendor_error(&response, settings.list_id))
    }

    fn export_batch(
        config: ExportConfig,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let settings = Settings::from(&config)?;
        if let Some(empty) = check_batch("Campaign Monitor", &contacts, MAX_BATCH)? {
            return Ok(empty);
        }
        let subscribers = contacts
            .iter()
            .map(|c| Subscriber {
                email_address: c.email.trim(),
                name: c.full_name(),
                consent_to_track: c
                    .attribute("consent-to-track")
                    .map(consent_value)
                    .unwrap_or(settings.consent),
            })
            .collect();
        let request = ImportRequest {
            subscribers,
            resubscribe: false,
            queue_subscription_based_autoresponders: false,
            restart_subscription_based_autoresponders: false,
        };
        let url = format!(
            "{}/subscribers/{}/import.json",
            config.base_url, settings.list_id
        );
        let response = http::post_json(&url, &request)?;
        let result: ImportResult = if response.is_success() {
            response.json()?
        } else {
            match response.json::<Envelope>() {
                Ok(Envelope {
                    code: IMPORT_HAD_FAILURES,
                    result_data: Some(data),
                    ..
                }) => data,
                _ => return Err(vendor_error(&response, settings.list_id)),
            }
        };
        report(&contacts, result)
    }
}

fn field(key: &str, label: &str, required: bool) -> ContactField {
    ContactField {
        key: key.into(),
        label: label.into(),
        required,
    }
}

/// An export's settings, checked.
struct Settings<'a> {
    list_id: &'a str,
    consent: &'static str,
}

impl<'a> Settings<'a> {
    fn from(config: &'a ExportConfig) -> Result<Settings<'a>, ConnectorError> {
        let list_id = config.require("list-id")?.trim();
        if list_id.len() != 32 || !list_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConnectorError::invalid_config(format!(
                "list-id `{list_id}` is not a Campaign Monitor list ID (32 hex characters)"
            )));
        }
        let consent = match config
            .get("consent-to-track")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => "Unchanged",
            Some(v) if v.is_empty() || v == "unchanged" => "Unchanged",
            Some(v) if v == "yes" => "Yes",
            Some(v) if v == "no" => "No",
            Some(v) => {
                return Err(ConnectorError::invalid_config(format!(
                    "consent-to-track `{v}` must be Yes, No or Unchanged"
                )));
            }
        };
        Ok(Settings { list_id, consent })
    }
}

/// A profile's consent value: truthy words mean Yes, anything else No.
fn consent_value(raw: &str) -> &'static str {
    match raw.trim().to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" | "1" => "Yes",
        "" | "unchanged" => "Unchanged",
        _ => "No",
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ImportRequest<'a> {
    subscribers: Vec<Subscriber<'a>>,
    resubscribe: bool,
    #[serde(rename = "QueueSubscriptionBasedAutoResponders")]
    queue_subscription_based_autoresponders: bool,
    #[serde(rename = "RestartSubscriptionBasedAutoresponders")]
    restart_subscription_based_autoresponders: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Subscriber<'a> {
    email_address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    consent_to_track: &'static str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImportResult {
    total_existing_subscribers: u32,
    total_new_subscribers: u32,
    #[serde(default)]
    failure_details: Vec<FailureDetail>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FailureDetail {
    email_address: String,
    code: i64,
    message: String,
}

/// Campaign Monitor's error envelope.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    code: i64,
    message: String,
    result_data: Option<ImportResult>,
}

/// Turns an import result into one outcome per contact. Campaign Monitor reports created and
/// updated as totals and names only the addresses that failed.
fn report(contacts: &[Contact], result: ImportResult) -> Result<BatchReport, ConnectorError> {
    let mut report = ReportBuilder::new("Campaign Monitor", contacts);
    for failure in &result.failure_details {
        let kind = if SUPPRESSED_CODES.contains(&failure.code) {
            IssueKind::Suppressed
        } else {
            IssueKind::Rejected
        };
        report.issue(
            &failure.email_address,
            kind,
            failure.code.to_string(),
            failure.message.clone(),
        )?;
    }
    report.finish(
        result.total_new_subscribers,
        result.total_existing_subscribers,
    )
}

/// Maps a non-success answer to a connector error.
fn vendor_error(response: &Response, list_id: &str) -> ConnectorError {
    let envelope = response.json::<Envelope>().ok();
    let (code, message) = match &envelope {
        Some(e) => (Some(e.code), e.message.clone()),
        None => (
            None,
            format!("HTTP {}: {}", response.status, response.body_excerpt()),
        ),
    };
    let described = match code {
        Some(code) => format!("Campaign Monitor error {code}: {message}"),
        None => format!("Campaign Monitor answered {message}"),
    };
    let kind = match (response.status, code) {
        (_, Some(INVALID_LIST_ID)) => {
            return ConnectorError::new(
                ErrorKind::NotFound,
                format!(
                    "list `{list_id}` was not found in the Campaign Monitor account ({described})"
                ),
            )
            .with_code(INVALID_LIST_ID);
        }
        (401, _) => ErrorKind::Unauthorized,
        (429, _) => ErrorKind::RateLimited,
        _ => ErrorKind::Vendor,
    };
    let message = match kind {
        ErrorKind::Unauthorized => format!("Campaign Monitor refused the credential ({described})"),
        _ => described,
    };
    let mut error = ConnectorError::new(kind, message)
        .retryable(response.status == 429 || response.status >= 500);
    error.vendor_code = code.map(|c| c.to_string());
    error
}

export_connector!(CampaignMonitor);
