//! Mailchimp Marketing API 3.0 export connector.
//!
//! Sends contacts with batch subscribe (`POST /lists/{audience}`, at most 500 members a call,
//! `update_existing: true`): new contacts are subscribed, existing ones updated, first and last
//! name go to merge fields (FNAME/LNAME unless the export names others). Mailchimp refuses to
//! resubscribe people who unsubscribed, were cleaned or were permanently deleted; those per-member
//! refusals are reported as suppressed. Contract: shared/vendors/mailchimp.md.

use std::collections::BTreeMap;

use cdp_connector_sdk::http::{self, Response};
use cdp_connector_sdk::*;
use serde::{Deserialize, Serialize};

struct Mailchimp;

/// Largest batch subscribe Mailchimp accepts.
const MAX_BATCH: u32 = 500;

/// Phrases of Mailchimp's per-member refusals that mean "kept out on purpose" (compliance
/// state after unsubscribe/bounce/cleaning, or permanently deleted).
const SUPPRESSION_PHRASES: [&str; 3] =
    ["compliance state", "permanently deleted", "forgotten email"];

impl Connector for Mailchimp {
    fn describe() -> ConnectorInfo {
        let setting = |key: &str, label: &str, help: &str, required: bool| ConfigField {
            key: key.into(),
            label: label.into(),
            help: help.into(),
            required,
        };
        let field = |key: &str, label: &str, required: bool| ContactField {
            key: key.into(),
            label: label.into(),
            required,
        };
        ConnectorInfo {
            id: "mailchimp".into(),
            display_name: "Mailchimp".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            default_base_url: "https://{dc}.api.mailchimp.com/3.0".into(),
            hosts: vec!["*.api.mailchimp.com".into()],
            auth: AuthScheme::BasicSecretAsPassword("connector-host".into()),
            config_fields: vec![
                setting(
                    "audience-id",
                    "Audience ID",
                    "Audience -> Settings -> Audience name and defaults -> Audience ID (not the numeric web id).",
                    true,
                ),
                setting(
                    "new-status",
                    "Status of new contacts",
                    "subscribed (default) or pending (Mailchimp sends a confirmation email first).",
                    false,
                ),
                setting(
                    "first-name-merge-field",
                    "First-name merge field",
                    "Merge tag for the first name (default FNAME).",
                    false,
                ),
                setting(
                    "last-name-merge-field",
                    "Last-name merge field",
                    "Merge tag for the last name (default LNAME).",
                    false,
                ),
                setting(
                    "tags",
                    "Tags",
                    "Comma-separated tags added to every exported contact, e.g. cdp:newsletter.",
                    false,
                ),
            ],
            contact_fields: vec![
                field("email", "Email", true),
                field("first-name", "First name", false),
                field("last-name", "Last name", false),
            ],
            max_batch_size: MAX_BATCH,
            // Mailchimp allows 10 simultaneous connections per account; the 11th gets 429.
            max_concurrent_requests: 10,
            max_requests_per_second: 0,
        }
    }

    fn validate(config: ExportConfig) -> Result<(), ConnectorError> {
        if config.settings.is_empty() {
            // A connection being saved: the health check answers only a valid credential.
            let response = http::get(&format!("{}/ping", config.base_url))?;
            return match response.is_success() {
                true => Ok(()),
                false => Err(vendor_error(&response, "")),
            };
        }
        let settings = Settings::from(&config)?;
        let response = http::get(&format!(
            "{}/lists/{}",
            config.base_url,
            http::encode_component(settings.audience)
        ))?;
        if response.is_success() {
            return Ok(());
        }
        Err(vendor_error(&response, settings.audience))
    }

    fn export_batch(
        config: ExportConfig,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let settings = Settings::from(&config)?;
        if let Some(empty) = check_batch("Mailchimp", &contacts, MAX_BATCH)? {
            return Ok(empty);
        }
        let members = contacts
            .iter()
            .map(|c| {
                let mut merge_fields = BTreeMap::new();
                if let Some(first) = &c.first_name {
                    merge_fields.insert(settings.first_name_tag, first.as_str());
                }
                if let Some(last) = &c.last_name {
                    merge_fields.insert(settings.last_name_tag, last.as_str());
                }
                Member {
                    email_address: c.email.trim(),
                    status: settings.new_status,
                    merge_fields,
                    tags: &settings.tags,
                }
            })
            .collect();
        let request = BatchRequest {
            members,
            update_existing: true,
            sync_tags: false,
        };
        let url = format!(
            "{}/lists/{}",
            config.base_url,
            http::encode_component(settings.audience)
        );
        let response = http::post_json(&url, &request)?;
        if !response.is_success() {
            return Err(vendor_error(&response, settings.audience));
        }
        let result: BatchResult = response.json()?;
        let mut report = ReportBuilder::new("Mailchimp", &contacts);
        for error in &result.errors {
            let lower = error.error.to_lowercase();
            let kind = if SUPPRESSION_PHRASES.iter().any(|p| lower.contains(p)) {
                IssueKind::Suppressed
            } else {
                IssueKind::Rejected
            };
            report.issue(
                &error.email_address,
                kind,
                error.error_code.clone(),
                error.error.clone(),
            )?;
        }
        report.finish(
            result.new_members.len() as u32,
            result.updated_members.len() as u32,
        )
    }
}

/// An export's settings, checked.
struct Settings<'a> {
    audience: &'a str,
    new_status: &'static str,
    first_name_tag: &'a str,
    last_name_tag: &'a str,
    tags: Vec<&'a str>,
}

impl<'a> Settings<'a> {
    fn from(config: &'a ExportConfig) -> Result<Settings<'a>, ConnectorError> {
        let audience = config.require("audience-id")?.trim();
        if !audience.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConnectorError::invalid_config(format!(
                "audience-id `{audience}` is not a Mailchimp audience ID (letters and digits, e.g. 1a2b3c4d5e)"
            )));
        }
        let new_status = match config
            .get("new-status")
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("subscribed") => "subscribed",
            Some("pending") => "pending",
            Some(other) => {
                return Err(ConnectorError::invalid_config(format!(
                    "new-status `{other}` must be subscribed or pending"
                )));
            }
        };
        let merge_tag = |key: &str, default: &'static str| -> Result<&'a str, ConnectorError> {
            let tag = config
                .get(key)
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .unwrap_or(default);
            if tag.len() > 10 || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ConnectorError::invalid_config(format!(
                    "{key} `{tag}` is not a Mailchimp merge tag (up to 10 letters, digits or _)"
                )));
            }
            Ok(tag)
        };
        let tags = config
            .get("tags")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        Ok(Settings {
            audience,
            new_status,
            first_name_tag: merge_tag("first-name-merge-field", "FNAME")?,
            last_name_tag: merge_tag("last-name-merge-field", "LNAME")?,
            tags,
        })
    }
}

#[derive(Serialize)]
struct BatchRequest<'a> {
    members: Vec<Member<'a>>,
    update_existing: bool,
    sync_tags: bool,
}

#[derive(Serialize)]
struct Member<'a> {
    email_address: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    merge_fields: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tags: &'a [&'a str],
}

#[derive(Deserialize)]
struct BatchResult {
    #[serde(default)]
    new_members: Vec<MemberRef>,
    #[serde(default)]
    updated_members: Vec<MemberRef>,
    #[serde(default)]
    errors: Vec<MemberError>,
}

#[derive(Deserialize)]
struct MemberRef {
    #[allow(dead_code)]
    email_address: String,
}

#[derive(Deserialize)]
struct MemberError {
    email_address: String,
    error: String,
    #[serde(default = "generic")]
    error_code: String,
}

fn generic() -> String {
    "ERROR_GENERIC".into()
}

/// Mailchimp's problem document.
#[derive(Deserialize)]
struct Problem {
    title: String,
    #[serde(default)]
    detail: String,
}

/// Maps a non-success answer to a connector error.
fn vendor_error(response: &Response, audience: &str) -> ConnectorError {
    let described = match response.json::<Problem>() {
        Ok(p) if p.detail.is_empty() => p.title,
        Ok(p) => format!("{}: {}", p.title, p.detail),
        // At very high volume Mailchimp answers 429/403 without a body.
        Err(_) => format!("HTTP {}", response.status),
    };
    let (kind, message) = match response.status {
        401 | 403 => (
            ErrorKind::Unauthorized,
            format!("Mailchimp refused the credential ({described})"),
        ),
        404 => (
            ErrorKind::NotFound,
            format!("audience `{audience}` was not found in the Mailchimp account ({described})"),
        ),
        429 => (
            ErrorKind::RateLimited,
            format!("Mailchimp throttled the request ({described})"),
        ),
        _ => (ErrorKind::Vendor, format!("Mailchimp answered {described}")),
    };
    ConnectorError::new(kind, message)
        .with_code(response.status)
        .retryable(response.status == 429 || response.status >= 500)
}

export_connector!(Mailchimp);
