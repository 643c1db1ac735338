//! Campaign Monitor (createsend API v3.3) export connector.
//!
//! Sends contacts with the bulk import endpoint (`POST /subscribers/{list}/import.json`, at most
//! 1,000 a call), joins first and last name into the subscriber name, sends the list's own custom
//! fields an export maps (clearing those a contact has no value for), always sends
//! `Resubscribe: false` so people who left stay out, and turns the vendor's partial-failure answer
//! (HTTP 400, Code 210, `ResultData`) into per-contact outcomes. Contract: docs/vendors/campaign-monitor.md.
//!
//! Leave actions. Campaign Monitor has two subscriber-level ways to stop mailing someone, and
//! under this product's rule of never resubscribing (`Resubscribe: false`) neither can be undone:
//! - `unsubscribe`: `POST /subscribers/{list}/unsubscribe.json` with the address (createsend-python
//!   `Subscriber.unsubscribe`). Unsubscribed people are only re-activated by an import with
//!   `Resubscribe: true` (vendor contract section 6, [S16]); an import without it reports them
//!   with Code 206 and leaves them out.
//! - `delete`: `DELETE /subscribers/{list}.json?email=` "moves this subscriber to the deleted state"
//!   (createsend-python `Subscriber.delete`); deleted people likewise come back only with
//!   `Resubscribe: true` (Code 205 otherwise).
//!
//! Campaign Monitor has no archive or tag that would make a reversible action. `unsubscribe` is
//! idempotent (whoever is out already stays out), so it is one call a leaver, no read first;
//! an address the list no longer has (Code 203) needs nothing more. `delete` moves a subscriber
//! to another state, so it first reads the subscriber (`GET /subscribers/{list}.json?email=`)
//! and touches only an `Active` one: anyone unsubscribed, deleted, bounced or unconfirmed is
//! reported suppressed, untouched.

use cdp_connector_sdk::http::{self, Method, Request, Response};
use cdp_connector_sdk::*;
use serde::{Deserialize, Serialize};

pub struct CampaignMonitor;

/// Largest import Campaign Monitor accepts (more gives error 209).
const MAX_BATCH: u32 = 1000;
/// Leavers a call: each is its own request at the vendor.
const LEAVE_BATCH: u32 = 100;
/// The longest custom-field value Campaign Monitor stores ("Value max 250 chars", see
/// docs/vendors/campaign-monitor.md, sources S4 and S10).
const MAX_CUSTOM_FIELD_VALUE: u32 = 250;
/// The longest first or last name sent (they are joined into `Name`). UNCONFIRMED: Campaign
/// Monitor publishes no limit for `Name`; this uses its one published value limit.
const MAX_NAME_PART: u32 = 250;
/// Per-row failure codes that mean "kept out on purpose": in suppression list, deleted,
/// unsubscribed, bounced, unconfirmed.
const SUPPRESSED_CODES: [i64; 5] = [204, 205, 206, 207, 208];
/// Error code Campaign Monitor uses for an unknown list ID (with HTTP 400 or 401).
const INVALID_LIST_ID: i64 = 101;
/// Error code of an import that partly failed; the good rows were imported.
const IMPORT_HAD_FAILURES: i64 = 210;
/// Error code of a subscriber lookup or removal for an address the list does not have.
const NOT_IN_LIST: i64 = 203;

impl Connector for CampaignMonitor {
    const NAME: &'static str = "Campaign Monitor";
    /// Reading the account's clients proves the credential.
    const CREDENTIAL_CHECK: &'static str = "/clients.json";
    type Settings = Settings;

    fn describe() -> ConnectorInfo {
        Description::new("campaign-monitor", Self::NAME, env!("CARGO_PKG_VERSION"))
            .base_url("https://api.createsend.com/api/v3.3")
            .auth(AuthScheme::BasicSecretAsUser("x".into()))
            .setting(
                "list-id",
                "List ID",
                "The API list ID (32 hex characters), shown on the list's \"change name/type\" page.",
            )
            .optional_setting(
                "consent-to-track",
                "Consent to track",
                "Yes, No or Unchanged (default): the tracking consent recorded for contacts without a mapped consent-to-track field.",
            )
            .field("first-name", "First name", MAX_NAME_PART)
            .field("last-name", "Last name", MAX_NAME_PART)
            .field("consent-to-track", "Consent to track (yes/no)", 0)
            .custom_fields(MAX_CUSTOM_FIELD_VALUE)
            .leave_action(
                "unsubscribe",
                "Unsubscribe",
                "Unsubscribes the contact from the list. Irreversible: Campaign Monitor re-activates unsubscribed people only when they subscribe again themselves.",
                false,
            )
            // One person a request at the vendor, sent together 100 a call: a call a leaver
            // cost half a delta run in instantiations and settlements (benchmark section 5),
            // and a crash re-does at most the calls in flight, idempotently, which the host
            // records as its own removals.
            .leave_batch_size(LEAVE_BATCH)
            .leave_action(
                "delete",
                "Delete",
                "Moves the contact to the list's deleted state. Irreversible: a deleted contact cannot be added back by an export.",
                false,
            )
            .leave_batch_size(LEAVE_BATCH)
            // Campaign Monitor publishes no concurrency or rate limit for imports (it throttles
            // with 429, which the host's broker rides out).
            .max_batch_size(MAX_BATCH)
            .build()
    }

    fn validate(export: &Export<Settings>) -> Result<(), ConnectorError> {
        let list_id = &export.settings.list_id;
        let response = http::get(&export.url(&format!("/lists/{list_id}.json")))?;
        if !response.is_success() {
            return Err(list_error(&response, list_id));
        }
        let custom: Vec<&str> = export.custom_fields().collect();
        if custom.is_empty() {
            return Ok(());
        }
        let response = http::get(&export.url(&format!("/lists/{list_id}/customfields.json")))?;
        if !response.is_success() {
            return Err(list_error(&response, list_id));
        }
        let fields: Vec<CustomField> = response.json()?;
        let keys: Vec<&str> = fields.iter().map(|f| f.key.as_str()).collect();
        match missing_field(&custom, &keys, same_key) {
            Some((wanted, known)) => Err(ConnectorError::invalid_config(format!(
                "list `{list_id}` has no custom field `{wanted}` (its custom fields: {known})"
            ))),
            None => Ok(()),
        }
    }

    fn vendor_error(response: &Response) -> ConnectorError {
        list_error(response, "")
    }

    fn export_batch(
        export: &Export<Settings>,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        let settings = &export.settings;
        let maps_name = export.maps("first-name") || export.maps("last-name");
        let custom: Vec<&str> = export.custom_fields().collect();
        let subscribers = contacts
            .iter()
            .map(|c| Subscriber {
                email_address: c.email.trim(),
                // A mapped name the contact no longer has is cleared, not kept.
                name: c.full_name().or_else(|| maps_name.then(String::new)),
                custom_fields: custom
                    .iter()
                    .map(|key| match c.attribute(key) {
                        Some(value) => CustomFieldValue {
                            key: bare_key(key),
                            value,
                            clear: false,
                        },
                        None => CustomFieldValue {
                            key: bare_key(key),
                            value: "",
                            clear: true,
                        },
                    })
                    .collect(),
                consent_to_track: c
                    .attribute("consent-to-track")
                    .map(consent_value)
                    .unwrap_or(settings.consent_to_track.as_str()),
            })
            .collect();
        let request = ImportRequest {
            subscribers,
            resubscribe: false,
            queue_subscription_based_autoresponders: false,
            restart_subscription_based_autoresponders: false,
        };
        let url = export.url(&format!("/subscribers/{}/import.json", settings.list_id));
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
                _ => return Err(list_error(&response, &settings.list_id)),
            }
        };
        report(contacts, result)
    }

    fn apply_leave_action(
        export: &Export<Settings>,
        action: &str,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        let list_id = &export.settings.list_id;
        let list_url = export.url(&format!("/subscribers/{list_id}"));
        let remove = |email: &str| -> Result<Request, ConnectorError> {
            let query = format!("email={}", http::encode_component(email));
            match action {
                "unsubscribe" => Request::json(
                    Method::Post,
                    format!("{list_url}/unsubscribe.json"),
                    &Unsubscribe {
                        email_address: email,
                    },
                ),
                "delete" => Ok(Request {
                    method: Method::Delete,
                    url: format!("{list_url}.json?{query}"),
                    body: None,
                }),
                other => Err(ConnectorError::invalid_config(format!(
                    "Campaign Monitor has no leave action `{other}`"
                ))),
            }
        };
        let mut report = ReportBuilder::new(Self::NAME, contacts);
        let mut acted = 0u32;
        // Unsubscribing is idempotent: one call a leaver, no read first. Whoever is out
        // already (unsubscribed, bounced) stays out; whoever is gone answers Code 203.
        let to_remove: Vec<&str> = if action == "unsubscribe" {
            contacts.iter().map(|c| c.email.trim()).collect()
        } else {
            active_only(&list_url, list_id, contacts, &mut report, &mut acted)?
        };
        let removals: Vec<Request> = to_remove
            .iter()
            .map(|e| remove(e))
            .collect::<Result<_, _>>()?;
        for (email, answer) in to_remove.iter().zip(http::send_all(&removals)) {
            let answer = answer?;
            if answer.is_success() || envelope_code(&answer) == Some(NOT_IN_LIST) {
                acted += 1;
            } else if answer.status == 400 {
                let error = list_error(&answer, list_id);
                report.issue(
                    email,
                    IssueKind::Rejected,
                    error.vendor_code.clone().unwrap_or_default(),
                    error.message,
                )?;
            } else {
                return Err(list_error(&answer, list_id));
            }
        }
        report.finish(0, acted)
    }
}

/// Reads each leaver (`delete` moves a subscriber to another state, so it touches only an
/// Active one): the addresses to act on; anyone else is reported suppressed and untouched,
/// and an address the list no longer has needs nothing more.
fn active_only<'c>(
    list_url: &str,
    list_id: &str,
    contacts: &'c [Contact],
    report: &mut ReportBuilder<'_>,
    acted: &mut u32,
) -> Result<Vec<&'c str>, ConnectorError> {
    let lookups: Vec<Request> = contacts
        .iter()
        .map(|c| {
            let query = http::encode_component(c.email.trim());
            Request::get(format!("{list_url}.json?email={query}"))
        })
        .collect();
    let mut to_remove = vec![];
    for (contact, answer) in contacts.iter().zip(http::send_all(&lookups)) {
        let answer = answer?;
        let email = contact.email.trim();
        if answer.is_success() {
            let details: SubscriberDetails = answer.json()?;
            if details.state == "Active" {
                to_remove.push(email);
            } else {
                report.issue(
                    email,
                    IssueKind::Suppressed,
                    details.state.clone(),
                    format!(
                        "Subscriber is {}; left untouched",
                        details.state.to_lowercase()
                    ),
                )?;
            }
        } else if envelope_code(&answer) == Some(NOT_IN_LIST) {
            *acted += 1; // gone already: nothing to do
        } else {
            return Err(list_error(&answer, list_id));
        }
    }
    Ok(to_remove)
}

/// Whether a custom-field key as the list reports it (`[favouritecolour]`) names the field an
/// export maps (`favouritecolour` or `[FavouriteColour]`).
fn same_key(listed: &str, mapped: &str) -> bool {
    bare_key(listed).eq_ignore_ascii_case(bare_key(mapped))
}

/// A custom-field key without its brackets, as imports send it.
fn bare_key(key: &str) -> &str {
    key.trim().trim_start_matches('[').trim_end_matches(']')
}

/// The Code of a Campaign Monitor error envelope, if the answer is one.
fn envelope_code(response: &Response) -> Option<i64> {
    response.json::<Envelope>().ok().map(|e| e.code)
}

/// An export's settings.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Settings {
    /// The API list ID: 32 hex characters.
    #[serde(deserialize_with = "list_id")]
    list_id: String,
    /// `Yes`, `No` or `Unchanged`, for contacts without a mapped consent-to-track field.
    #[serde(default = "unchanged", deserialize_with = "consent_setting")]
    consent_to_track: String,
}

fn list_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = String::deserialize(d)?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(serde::de::Error::custom(format!(
            "list-id `{id}` is not a Campaign Monitor list ID (32 hex characters)"
        )));
    }
    Ok(id)
}

fn unchanged() -> String {
    "Unchanged".into()
}

fn consent_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = String::deserialize(d)?;
    match value.to_ascii_lowercase().as_str() {
        "unchanged" => Ok(unchanged()),
        "yes" => Ok("Yes".into()),
        "no" => Ok("No".into()),
        _ => Err(serde::de::Error::custom(format!(
            "consent-to-track `{value}` must be Yes, No or Unchanged"
        ))),
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    custom_fields: Vec<CustomFieldValue<'a>>,
    consent_to_track: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CustomFieldValue<'a> {
    key: &'a str,
    value: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    clear: bool,
}

/// One of a list's custom fields, as `GET /lists/{id}/customfields.json` lists them.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CustomField {
    key: String,
}

/// What `GET /subscribers/{list}.json?email=` says of a subscriber (the fields read here).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SubscriberDetails {
    state: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Unsubscribe<'a> {
    email_address: &'a str,
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
    let mut report = ReportBuilder::new(CampaignMonitor::NAME, contacts);
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

/// Maps a non-success answer to a connector error: Campaign Monitor's envelope carries its own
/// code, and an unknown list is Code 101 (with HTTP 400 or 401), not a 404.
fn list_error(response: &Response, list_id: &str) -> ConnectorError {
    let Ok(envelope) = response.json::<Envelope>() else {
        return response.error(CampaignMonitor::NAME);
    };
    let said = format!(
        "Campaign Monitor error {}: {}",
        envelope.code, envelope.message
    );
    if envelope.code == INVALID_LIST_ID {
        return ConnectorError::new(
            ErrorKind::NotFound,
            format!("list `{list_id}` was not found in the Campaign Monitor account ({said})"),
        )
        .with_code(INVALID_LIST_ID);
    }
    let mut error = http::vendor_error(CampaignMonitor::NAME, response.status, &said);
    error.message = match error.kind {
        ErrorKind::Unauthorized => format!("Campaign Monitor refused the credential ({said})"),
        _ => said,
    };
    error.with_code(envelope.code)
}

export_connector!(CampaignMonitor);
