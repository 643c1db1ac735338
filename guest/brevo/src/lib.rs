//! Brevo (API v3) export connector: a vendor the contract was not shaped around, reached as it
//! is. Contract: docs/vendors/brevo.md.
//!
//! - The API key goes in Brevo's own `api-key` header (contract 0.3's `auth-scheme.header`).
//! - Brevo's limits are per endpoint class: everything under `/contacts` 10 requests a second
//!   and 36,000 an hour on every plan [B2]; both are declared, so the host paces every run
//!   of an account below them. The credential is checked on a `/contacts` read, not on
//!   `/account`, whose class allows 100 an hour.
//! - Contacts are upserted one a request (`POST /contacts` with `updateEnabled`: `201` created,
//!   `204` updated) [B3], the only call that says per contact what happened; an existing
//!   contact is then read to tell a blacklisted one (kept out, never unblacklisted: the
//!   connector never sends `emailBlacklisted: false`) from an updated one.
//! - Leave actions: `remove-from-list` (reversible: up to 150 addresses a call [B5]) and
//!   `unsubscribe` (blacklists the address for email; irreversible by an export). Both read
//!   each leaver first and touch only one still receiving mailings on the list.
//! - Erasure: `DELETE /contacts/{email}` deletes the contact and what Brevo holds on them [B6].

use cdp_connector_sdk::http::{self, Method, Request, Response};
use cdp_connector_sdk::*;
use serde::{Deserialize, Serialize};

pub struct Brevo;

/// Contacts a call: each is one request, so this sets only how often progress is recorded.
const MAX_BATCH: u32 = 50;
/// Addresses one removal from a list takes [B5].
const MAX_REMOVE: u32 = 150;
/// The longest text attribute value sent. UNCONFIRMED: Brevo publishes no limit for text
/// attributes; its app's text inputs take 255 characters.
const MAX_TEXT: u32 = 255;

impl Connector for Brevo {
    const NAME: &'static str = "Brevo";
    /// A read in the `/contacts` class (10 a second), not `/account` (100 an hour).
    const CREDENTIAL_CHECK: &'static str = "/contacts/lists?limit=1&offset=0";
    type Settings = Settings;

    fn describe() -> ConnectorInfo {
        Description::new("brevo", Self::NAME, env!("CARGO_PKG_VERSION"))
            .base_url("https://api.brevo.com/v3")
            .auth(AuthScheme::header("api-key", ""))
            .setting(
                "list-id",
                "List ID",
                "The list's numeric ID (Contacts -> Lists, the # column).",
            )
            .optional_setting(
                "first-name-attribute",
                "First name attribute",
                "The contact attribute holding first names (FIRSTNAME unless your account names it otherwise, e.g. PRENOM).",
            )
            .optional_setting(
                "last-name-attribute",
                "Last name attribute",
                "The contact attribute holding last names (LASTNAME unless your account names it otherwise, e.g. NOM).",
            )
            .field("first-name", "First name", MAX_TEXT)
            .field("last-name", "Last name", MAX_TEXT)
            .custom_fields(MAX_TEXT)
            .leave_action(
                "remove-from-list",
                "Remove from the list",
                "Takes the contact off the export's list; the contact stays in the account and comes back if they rejoin the segment.",
                true,
            )
            // Brevo takes 150 a removal [B5]; a call holds no more than a batch.
            .leave_batch_size(MAX_BATCH.min(MAX_REMOVE))
            .leave_action(
                "unsubscribe",
                "Unsubscribe",
                "Blacklists the contact for email across the account. Irreversible: an export never unblacklists anyone.",
                false,
            )
            .leave_batch_size(1)
            .erasure("Deletes the contact and everything Brevo holds on them (DELETE /contacts/{email}).")
            // Every call the connector makes is in Brevo's `/contacts` class [B2].
            .rate_window_for(10, 1, None, "/contacts")
            .rate_window_for(36_000, 3_600, None, "/contacts")
            .max_batch_size(MAX_BATCH)
            .build()
    }

    fn validate(export: &Export<Settings>) -> Result<(), ConnectorError> {
        let list = export.settings.list_id;
        let response = http::get(&export.url(&format!("/contacts/lists/{list}")))?;
        if !response.is_success() {
            return Err(brevo_error(&response, Some(list)));
        }
        Ok(())
    }

    fn vendor_error(response: &Response) -> ConnectorError {
        brevo_error(response, None)
    }

    fn export_batch(
        export: &Export<Settings>,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        let settings = &export.settings;
        let upserts = contacts
            .iter()
            .map(|c| {
                Request::json(
                    Method::Post,
                    export.url("/contacts"),
                    &Upsert {
                        email: c.email.trim(),
                        attributes: attributes(export, c),
                        list_ids: [settings.list_id],
                        update_enabled: true,
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut report = ReportBuilder::new(Self::NAME, contacts);
        let (mut created, mut existing) = (0u32, vec![]);
        for (contact, answer) in contacts.iter().zip(http::send_all(&upserts)) {
            let answer = answer?;
            let email = contact.email.trim();
            match answer.status {
                201 => created += 1,
                204 => existing.push(email),
                400 => {
                    let said = said(&answer);
                    report.issue(email, IssueKind::Rejected, said.code, said.message)?;
                }
                _ => return Err(brevo_error(&answer, Some(settings.list_id))),
            }
        }
        // An existing contact may be blacklisted: updated, but kept out of mailings.
        let mut updated = 0u32;
        for (email, held) in existing.iter().zip(read_all(export, &existing)) {
            match held? {
                Some(held) if held.email_blacklisted => report.issue(
                    email,
                    IssueKind::Suppressed,
                    "blacklisted",
                    "The contact is blacklisted for email; updated, still kept out",
                )?,
                _ => updated += 1,
            }
        }
        report.finish(created, updated)
    }

    fn apply_leave_action(
        export: &Export<Settings>,
        action: &str,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        let list = export.settings.list_id;
        let emails: Vec<&str> = contacts.iter().map(|c| c.email.trim()).collect();
        let mut report = ReportBuilder::new(Self::NAME, contacts);
        let (mut acted, mut to_act) = (0u32, vec![]);
        for (email, held) in emails.iter().zip(read_all(export, &emails)) {
            match held? {
                // Gone, or off the list already: nothing to do.
                None => acted += 1,
                Some(h) if !h.list_ids.contains(&list) => acted += 1,
                Some(h) if h.email_blacklisted => report.issue(
                    email,
                    IssueKind::Suppressed,
                    "blacklisted",
                    "The contact is blacklisted for email; left untouched",
                )?,
                Some(_) => to_act.push(*email),
            }
        }
        if to_act.is_empty() {
            return report.finish(0, acted);
        }
        match action {
            "remove-from-list" => {
                let url = export.url(&format!("/contacts/lists/{list}/contacts/remove"));
                let answer = http::post_json(&url, &Remove { emails: &to_act })?;
                if !answer.is_success() {
                    return Err(brevo_error(&answer, Some(list)));
                }
                // Brevo names those it removed and those the list did not hold: either way
                // they are off the list.
                acted += to_act.len() as u32;
            }
            "unsubscribe" => {
                let blacklist = to_act
                    .iter()
                    .map(|email| {
                        Request::json(
                            Method::Put,
                            contact_url(export, email),
                            &Blacklist {
                                email_blacklisted: true,
                            },
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                for answer in http::send_all(&blacklist) {
                    let answer = answer?;
                    if !(answer.is_success() || answer.status == 404) {
                        return Err(brevo_error(&answer, Some(list)));
                    }
                    acted += 1;
                }
            }
            other => {
                return Err(ConnectorError::invalid_config(format!(
                    "Brevo has no leave action `{other}`"
                )));
            }
        }
        report.finish(0, acted)
    }

    fn erase_contacts(
        export: &Export<Settings>,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        let deletes: Vec<Request> = contacts
            .iter()
            .map(|c| Request {
                method: Method::Delete,
                url: contact_url(export, c.email.trim()),
                body: None,
            })
            .collect();
        let report = ReportBuilder::new(Self::NAME, contacts);
        let mut erased = 0u32;
        for answer in http::send_all(&deletes) {
            let answer = answer?;
            // Not there: nothing left to erase.
            if !(answer.is_success() || answer.status == 404) {
                return Err(brevo_error(&answer, None));
            }
            erased += 1;
        }
        report.finish(0, erased)
    }
}

/// The attributes sent for a contact: its names under the account's attribute names, and the
/// export's custom fields in capitals (Brevo's attribute names are). A mapped value the
/// contact no longer has is sent empty, which clears it.
fn attributes(
    export: &Export<Settings>,
    c: &Contact,
) -> serde_json::Map<String, serde_json::Value> {
    let s = &export.settings;
    let mut out = serde_json::Map::new();
    let mut put = |key: &str, mapped: bool, value: Option<&str>| {
        if mapped || value.is_some() {
            out.insert(
                key.to_ascii_uppercase(),
                serde_json::Value::String(value.unwrap_or("").trim().into()),
            );
        }
    };
    put(
        &s.first_name_attribute,
        export.maps("first-name"),
        c.first_name.as_deref(),
    );
    put(
        &s.last_name_attribute,
        export.maps("last-name"),
        c.last_name.as_deref(),
    );
    for key in export.custom_fields() {
        put(key, true, c.attribute(key));
    }
    out
}

/// `/contacts/{email}`, the address encoded.
fn contact_url(export: &Export<Settings>, email: &str) -> String {
    export.url(&format!("/contacts/{}", http::encode_component(email)))
}

/// Reads each address's contact: `None` when Brevo has none.
fn read_all(
    export: &Export<Settings>,
    emails: &[&str],
) -> Vec<Result<Option<Held>, ConnectorError>> {
    let reads: Vec<Request> = emails
        .iter()
        .map(|e| Request::get(contact_url(export, e)))
        .collect();
    http::send_all(&reads)
        .into_iter()
        .map(|answer| {
            let answer = answer?;
            match answer.status {
                200 => answer.json().map(Some),
                404 => Ok(None),
                _ => Err(brevo_error(&answer, Some(export.settings.list_id))),
            }
        })
        .collect()
}

/// An export's settings.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Settings {
    #[serde(deserialize_with = "list_id")]
    list_id: u64,
    #[serde(default = "first_name", deserialize_with = "attribute_name")]
    first_name_attribute: String,
    #[serde(default = "last_name", deserialize_with = "attribute_name")]
    last_name_attribute: String,
}

fn list_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let id = String::deserialize(d)?;
    match id.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(serde::de::Error::custom(format!(
            "list-id `{id}` is not a Brevo list ID (a positive number)"
        ))),
    }
}

fn attribute_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(serde::de::Error::custom(format!(
            "`{name}` is not a Brevo attribute name (letters, digits and underscores)"
        )));
    }
    Ok(name.to_ascii_uppercase())
}

fn first_name() -> String {
    "FIRSTNAME".into()
}

fn last_name() -> String {
    "LASTNAME".into()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Upsert<'a> {
    email: &'a str,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    attributes: serde_json::Map<String, serde_json::Value>,
    list_ids: [u64; 1],
    update_enabled: bool,
}

#[derive(Serialize)]
struct Remove<'a> {
    emails: &'a [&'a str],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blacklist {
    email_blacklisted: bool,
}

/// What `GET /contacts/{email}` says of a contact (the fields read here) [B4].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Held {
    #[serde(default)]
    email_blacklisted: bool,
    #[serde(default)]
    list_ids: Vec<u64>,
}

/// Brevo's error body: `{"code": "invalid_parameter", "message": "..."}` [B3].
#[derive(Deserialize, Default)]
struct Said {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn said(response: &Response) -> Said {
    response.json::<Said>().unwrap_or_else(|_| Said {
        code: response.status.to_string(),
        message: response.body_excerpt(),
    })
}

/// A Brevo error answer as a connector error; an unknown list is `not-found` with its id.
fn brevo_error(response: &Response, list: Option<u64>) -> ConnectorError {
    let s = said(response);
    let words = format!("{}: {}", s.code, s.message);
    if response.status == 404
        && let Some(list) = list
    {
        return ConnectorError::new(
            ErrorKind::NotFound,
            format!("list `{list}` was not found in the Brevo account ({words})"),
        )
        .with_code(s.code);
    }
    let mut error = http::vendor_error(Brevo::NAME, response.status, &words);
    if !s.code.is_empty() && s.code.parse::<u16>().is_err() {
        error = error.with_code(s.code);
    }
    error
}

export_connector!(Brevo);
