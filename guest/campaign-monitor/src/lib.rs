//! Campaign Monitor (createsend API v3.3) export connector.
//!
//! Sends contacts with the bulk import endpoint (`POST /subscribers/{list}/import.json`, at most
//! 1,000 a call), joins first and last name into the subscriber name, sends the list's own custom
//! fields an export maps (clearing those a contact has no value for), always sends
//! `Resubscribe: false` so people who left stay out, and turns the vendor's partial-failure answer
//! (HTTP 400, Code 210, `ResultData`) into per-contact outcomes. Contract: shared/vendors/campaign-monitor.md.
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
//! Campaign Monitor has no archive or tag that would make a reversible action. Both actions
//! first read the subscriber (`GET /subscribers/{list}.json?email=`) and touch only an `Active`
//! one: anyone unsubscribed, deleted, bounced or unconfirmed is reported suppressed, untouched,
//! and an address the list no longer has (Code 203) needs nothing more.

use cdp_connector_sdk::http::{self, Method, Request, Response};
use cdp_connector_sdk::*;
use serde::{Deserialize, Serialize};

struct CampaignMonitor;

/// Largest import Campaign Monitor accepts (more gives error 209).
const MAX_BATCH: u32 = 1000;
/// The longest custom-field value Campaign Monitor stores ("Value max 250 chars", see
/// shared/vendors/campaign-monitor.md, sources S4 and S10).
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
/// Contact fields every export can map; any other mapped field is one of the list's custom fields.
const DECLARED_FIELDS: [&str; 4] = ["email", "first-name", "last-name", "consent-to-track"];

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
                ContactField::new("email", "Email", true, MAX_EMAIL_LENGTH),
                ContactField::new("first-name", "First name", false, MAX_NAME_PART),
                ContactField::new("last-name", "Last name", false, MAX_NAME_PART),
                ContactField::new("consent-to-track", "Consent to track (yes/no)", false, 0),
            ],
            custom_fields: true,
            custom_field_max_length: MAX_CUSTOM_FIELD_VALUE,
            leave_actions: vec![
                LeaveAction::new(
                    "unsubscribe",
                    "Unsubscribe",
                    "Unsubscribes the contact from the list. Irreversible: Campaign Monitor re-activates unsubscribed people only when they subscribe again themselves.",
                    false,
                ),
                LeaveAction::new(
                    "delete",
                    "Delete",
                    "Moves the contact to the list's deleted state. Irreversible: a deleted contact cannot be added back by an export.",
                    false,
                ),
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
        if !response.is_success() {
            return Err(vendor_error(&response, settings.list_id));
        }
        let custom: Vec<&str> = config.custom_fields(&DECLARED_FIELDS).collect();
        if custom.is_empty() {
            return Ok(());
        }
        let response = http::get(&format!(
            "{}/lists/{}/customfields.json",
            config.base_url, settings.list_id
        ))?;
        if !response.is_success() {
            return Err(vendor_error(&response, settings.list_id));
        }
        let fields: Vec<CustomField> = response.json()?;
        let keys: Vec<&str> = fields.iter().map(|f| f.key.as_str()).collect();
        match missing_field(&custom, &keys, same_key) {
            Some((wanted, known)) => Err(ConnectorError::invalid_config(format!(
                "list `{}` has no custom field `{wanted}` (its custom fields: {known})",
                settings.list_id
            ))),
            None => Ok(()),
        }
    }

    fn export_batch(
        config: ExportConfig,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let settings = Settings::from(&config)?;
        if let Some(empty) = check_batch("Campaign Monitor", &contacts, MAX_BATCH)? {
            return Ok(empty);
        }
        let maps_name = config.maps("first-name") || config.maps("last-name");
        let custom: Vec<&str> = config.custom_fields(&DECLARED_FIELDS).collect();
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

    fn apply_leave_action(
        config: ExportConfig,
        action: String,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let settings = Settings::from(&config)?;
        if let Some(empty) = check_batch("Campaign Monitor", &contacts, MAX_BATCH)? {
            return Ok(empty);
        }
        let list_url = format!("{}/subscribers/{}", config.base_url, settings.list_id);
        let remove = |email: &str| -> Result<Request, ConnectorError> {
            let query = format!("email={}", http::encode_component(email));
            match action.as_str() {
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
                    "Campaign Monitor has no leave action `{other}` (it has: unsubscribe, delete)"
                ))),
            }
        };
        // Read each subscriber first: only an Active one is touched.
        let lookups: Vec<Request> = contacts
            .iter()
            .map(|c| {
                let query = http::encode_component(c.email.trim());
                Request::get(format!("{list_url}.json?email={query}"))
            })
            .collect();
        let mut report = ReportBuilder::new("Campaign Monitor", &contacts);
        let (mut acted, mut to_remove) = (0u32, vec![]);
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
                acted += 1; // gone already: nothing to do
            } else {
                return Err(vendor_error(&answer, settings.list_id));
            }
        }
        let removals: Vec<Request> = to_remove
            .iter()
            .map(|e| remove(e))
            .collect::<Result<_, _>>()?;
        for (email, answer) in to_remove.iter().zip(http::send_all(&removals)) {
            let answer = answer?;
            if answer.is_success() || envelope_code(&answer) == Some(NOT_IN_LIST) {
                acted += 1;
            } else if answer.status == 400 {
                let error = vendor_error(&answer, settings.list_id);
                report.issue(
                    email,
                    IssueKind::Rejected,
                    error.vendor_code.clone().unwrap_or_default(),
                    error.message,
                )?;
            } else {
                return Err(vendor_error(&answer, settings.list_id));
            }
        }
        report.finish(0, acted)
    }
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    custom_fields: Vec<CustomFieldValue<'a>>,
    consent_to_track: &'static str,
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
