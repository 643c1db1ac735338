//! Mailchimp Marketing API 3.0 export connector. Contract: shared/vendors/mailchimp.md.
//!
//! Sends contacts with batch subscribe (`POST /lists/{audience}`, at most 500 members a call).
//! Mailchimp's batch has no `status_if_new`, and a status sent for an existing member changes it
//! (`pending` for someone who unsubscribed even mails them an opt-in request, section 11b). So a
//! batch goes in two steps: first with `update_existing: false` and the export's status, which
//! creates the new members and names the existing ones (`ERROR_CONTACT_EXISTS`); then those with
//! `update_existing: true` and no status at all, which updates their fields and never their
//! status. An existing member who is unsubscribed or cleaned is reported suppressed.
//!
//! First and last name go to merge fields (FNAME/LNAME unless the export names others); any other
//! mapped field is one of the audience's own merge fields, checked when the export is saved. A
//! mapped field a contact has no value for is cleared.
//!
//! Leave actions. Every one first reads the member (`GET /lists/{id}/members/{hash}`) and touches
//! only a subscribed, pending or transactional one; an unsubscribed or cleaned member is reported
//! suppressed and left alone, an unknown one needs nothing more.
//! - `archive`: `DELETE /lists/{id}/members/{hash}` (section 11b). Reversible: a contact who comes
//!   back is added again by the next run.
//! - `untag`: the export puts its `membership-tag` on every member it sends, and the leavers lose
//!   it through the tag's static segment (`POST /lists/{id}/segments/{segment}` with
//!   `members_to_remove`, 500 at a time, section 7). Reversible: the tag returns with the member.
//! - `unsubscribe`: batch subscribe with `status: unsubscribed`. Irreversible: Mailchimp does not
//!   let a list owner subscribe them again (section 5, compliance state).

use std::collections::BTreeMap;

use cdp_connector_sdk::http::{self, Method, Request, Response};
use cdp_connector_sdk::*;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

struct Mailchimp;

/// Largest batch subscribe Mailchimp accepts.
const MAX_BATCH: u32 = 500;
/// The longest value of a text merge field (FNAME, LNAME and the audience's own). UNCONFIRMED:
/// Mailchimp's audience field settings cap text fields at 255 characters; the API reference
/// does not say.
const MAX_TEXT_MERGE_FIELD: u32 = 255;

/// Phrases of Mailchimp's per-member refusals that mean "kept out on purpose" (compliance
/// state after unsubscribe/bounce/cleaning, or permanently deleted).
const SUPPRESSION_PHRASES: [&str; 3] =
    ["compliance state", "permanently deleted", "forgotten email"];

/// Member statuses that mean "kept out": never resubscribed, never touched by a leave action.
const KEPT_OUT: [&str; 2] = ["unsubscribed", "cleaned"];

impl Connector for Mailchimp {
    fn describe() -> ConnectorInfo {
        let setting = |key: &str, label: &str, help: &str, required: bool| ConfigField {
            key: key.into(),
            label: label.into(),
            help: help.into(),
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
                    "subscribed (default) or pending (Mailchimp sends a confirmation email first). Applies to new members only; an existing member's status is never changed.",
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
                setting(
                    "membership-tag",
                    "Membership tag",
                    "A tag every contact the export sends carries and that leavers lose (needed by the untag leave action), e.g. cdp:in-newsletter.",
                    false,
                ),
            ],
            contact_fields: vec![
                ContactField::new("email", "Email", true, MAX_EMAIL_LENGTH),
                ContactField::new("first-name", "First name", false, MAX_TEXT_MERGE_FIELD),
                ContactField::new("last-name", "Last name", false, MAX_TEXT_MERGE_FIELD),
            ],
            custom_fields: true,
            custom_field_max_length: MAX_TEXT_MERGE_FIELD,
            leave_actions: vec![
                LeaveAction::new(
                    "archive",
                    "Archive",
                    "Archives the member (DELETE member). Reversible: a contact who rejoins the segment is added back.",
                    true,
                ),
                LeaveAction::new(
                    "untag",
                    "Remove the membership tag",
                    "Removes the export's membership-tag from the member, who stays on the audience. Reversible: the tag returns when they rejoin.",
                    true,
                ),
                LeaveAction::new(
                    "unsubscribe",
                    "Unsubscribe",
                    "Unsubscribes the member. Irreversible: Mailchimp lets only the contact subscribe again.",
                    false,
                ),
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
        let audience = format!("{}/lists/{}", config.base_url, settings.audience_path());
        let response = http::get(&audience)?;
        if !response.is_success() {
            return Err(vendor_error(&response, settings.audience));
        }
        if config.leave_action.as_deref() == Some("untag") && settings.membership_tag.is_none() {
            return Err(ConnectorError::invalid_config(
                "the untag leave action needs the membership-tag setting: the tag the export puts on every contact it sends and removes from those who leave",
            ));
        }
        let merged: Vec<&str> = settings
            .merge_tags(&config)
            .into_iter()
            .map(|(_, tag)| tag)
            .collect();
        if merged.is_empty() {
            return Ok(());
        }
        let response = http::get(&format!("{audience}/merge-fields?count=1000"))?;
        if !response.is_success() {
            return Err(vendor_error(&response, settings.audience));
        }
        let known: MergeFields = response.json()?;
        let tags: Vec<&str> = known.merge_fields.iter().map(|f| f.tag.as_str()).collect();
        match missing_field(&merged, &tags, |known, tag| known.eq_ignore_ascii_case(tag)) {
            Some((tag, known)) => Err(ConnectorError::invalid_config(format!(
                "audience `{}` has no merge field `{tag}` (its merge fields: {known})",
                settings.audience
            ))),
            None => Ok(()),
        }
    }

    fn export_batch(
        config: ExportConfig,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let settings = Settings::from(&config)?;
        if let Some(empty) = check_batch("Mailchimp", &contacts, MAX_BATCH)? {
            return Ok(empty);
        }
        let merge_tags = settings.merge_tags(&config);
        let member = |c, status| member(c, status, &merge_tags, &settings.tags);
        let url = format!("{}/lists/{}", config.base_url, settings.audience_path());
        let mut report = ReportBuilder::new("Mailchimp", &contacts);

        // Step 1: new members, with the export's status.
        let first = BatchRequest {
            members: contacts
                .iter()
                .map(|c| member(c, Some(settings.new_status)))
                .collect(),
            update_existing: false,
            sync_tags: false,
        };
        let result = batch(&url, &first, settings.audience)?;
        let mut created = result.new_members.len() as u32;
        let mut existing = vec![];
        for error in &result.errors {
            if error.error_code == "ERROR_CONTACT_EXISTS" {
                existing.push(error.email_address.to_lowercase());
            } else {
                record_refusal(&mut report, error)?;
            }
        }

        // Step 2: members who exist already, their fields updated and their status left alone.
        let mut updated = 0;
        if !existing.is_empty() {
            let second = BatchRequest {
                members: contacts
                    .iter()
                    .filter(|c| existing.contains(&c.email.trim().to_lowercase()))
                    .map(|c| member(c, None))
                    .collect(),
                update_existing: true,
                sync_tags: false,
            };
            let result = batch(&url, &second, settings.audience)?;
            created += result.new_members.len() as u32;
            for m in &result.updated_members {
                if KEPT_OUT.contains(&m.status.as_str()) {
                    report.issue(
                        &m.email_address,
                        IssueKind::Suppressed,
                        m.status.clone(),
                        format!("The member is {}: kept out, never resubscribed", m.status),
                    )?;
                } else {
                    updated += 1;
                }
            }
            for error in &result.errors {
                record_refusal(&mut report, error)?;
            }
        }
        report.finish(created, updated)
    }

    fn apply_leave_action(
        config: ExportConfig,
        action: String,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let settings = Settings::from(&config)?;
        if let Some(empty) = check_batch("Mailchimp", &contacts, MAX_BATCH)? {
            return Ok(empty);
        }
        let members = format!(
            "{}/lists/{}/members",
            config.base_url,
            settings.audience_path()
        );
        let mut report = ReportBuilder::new("Mailchimp", &contacts);

        // Read every member first: only those still in the audience's mailings are touched.
        let lookups: Vec<Request> = contacts
            .iter()
            .map(|c| {
                Request::get(format!(
                    "{members}/{}?fields=status",
                    subscriber_hash(&c.email)
                ))
            })
            .collect();
        let (mut acted, mut to_act) = (0u32, vec![]);
        for (contact, answer) in contacts.iter().zip(http::send_all(&lookups)) {
            let answer = answer?;
            let email = contact.email.trim();
            match answer.status {
                404 => acted += 1, // not in the audience: nothing to do
                s if (200..300).contains(&s) => {
                    let status = answer.json::<MemberStatus>()?.status;
                    if KEPT_OUT.contains(&status.as_str()) {
                        report.issue(
                            email,
                            IssueKind::Suppressed,
                            status.clone(),
                            format!("The member is {status}; left untouched"),
                        )?;
                    } else if status == "archived" {
                        acted += 1;
                    } else {
                        to_act.push(email);
                    }
                }
                _ => return Err(vendor_error(&answer, settings.audience)),
            }
        }
        if to_act.is_empty() {
            return report.finish(0, acted);
        }
        acted += match action.as_str() {
            "archive" => archive(&members, &to_act, &mut report, settings.audience)?,
            "untag" => untag(&config, &settings, &to_act, &mut report)?,
            "unsubscribe" => unsubscribe(&config, &settings, &to_act, &mut report)?,
            other => {
                return Err(ConnectorError::invalid_config(format!(
                    "Mailchimp has no leave action `{other}` (it has: archive, untag, unsubscribe)"
                )));
            }
        };
        report.finish(0, acted)
    }
}

/// `DELETE` each member (archives them); returns how many were archived.
fn archive(
    members: &str,
    emails: &[&str],
    report: &mut ReportBuilder,
    audience: &str,
) -> Result<u32, ConnectorError> {
    let deletes: Vec<Request> = emails
        .iter()
        .map(|e| Request {
            method: Method::Delete,
            url: format!("{members}/{}", subscriber_hash(e)),
            body: None,
        })
        .collect();
    let mut archived = 0;
    for (email, answer) in emails.iter().zip(http::send_all(&deletes)) {
        let answer = answer?;
        match answer.status {
            204 | 200 | 404 => archived += 1,
            400 => {
                let error = vendor_error(&answer, audience);
                report.issue(email, IssueKind::Rejected, "archive", error.message)?;
            }
            _ => return Err(vendor_error(&answer, audience)),
        }
    }
    Ok(archived)
}

/// Removes the membership tag from the members through its static segment.
fn untag(
    config: &ExportConfig,
    settings: &Settings,
    emails: &[&str],
    report: &mut ReportBuilder,
) -> Result<u32, ConnectorError> {
    let Some(tag) = settings.membership_tag else {
        return Err(ConnectorError::invalid_config(
            "the untag leave action needs the membership-tag setting",
        ));
    };
    let list = format!("{}/lists/{}", config.base_url, settings.audience_path());
    // Only the ids and names: counting each tag's members is work the vendor can skip.
    let answer = http::get(&format!(
        "{list}/segments?type=static&count=1000&fields=segments.id,segments.name"
    ))?;
    if !answer.is_success() {
        return Err(vendor_error(&answer, settings.audience));
    }
    let segments: Segments = answer.json()?;
    let Some(segment) = segments.segments.iter().find(|s| s.name == tag) else {
        return Ok(emails.len() as u32); // nobody carries the tag
    };
    let body = SegmentChange {
        members_to_remove: emails,
    };
    let answer = http::post_json(&format!("{list}/segments/{}", segment.id), &body)?;
    if !answer.is_success() {
        return Err(vendor_error(&answer, settings.audience));
    }
    let result: SegmentResult = answer.json()?;
    let mut refused = 0;
    for error in &result.errors {
        for email in &error.email_addresses {
            report.issue(email, IssueKind::Rejected, "untag", error.error.clone())?;
            refused += 1;
        }
    }
    Ok(emails.len() as u32 - refused)
}

/// Unsubscribes the members with one batch.
fn unsubscribe(
    config: &ExportConfig,
    settings: &Settings,
    emails: &[&str],
    report: &mut ReportBuilder,
) -> Result<u32, ConnectorError> {
    let request = BatchRequest {
        members: emails
            .iter()
            .map(|e| Member {
                email_address: e,
                status: Some("unsubscribed"),
                merge_fields: BTreeMap::new(),
                tags: &[],
            })
            .collect(),
        update_existing: true,
        sync_tags: false,
    };
    let url = format!("{}/lists/{}", config.base_url, settings.audience_path());
    let result = batch(&url, &request, settings.audience)?;
    for error in &result.errors {
        report.issue(
            &error.email_address,
            IssueKind::Rejected,
            error.error_code.clone(),
            error.error.clone(),
        )?;
    }
    Ok((result.new_members.len() + result.updated_members.len()) as u32)
}

/// Sends one batch subscribe call and reads its answer.
fn batch(url: &str, request: &BatchRequest, audience: &str) -> Result<BatchResult, ConnectorError> {
    let response = http::post_json(url, request)?;
    if !response.is_success() {
        return Err(vendor_error(&response, audience));
    }
    response.json()
}

/// A per-member refusal: kept out on purpose (suppressed), or the data refused (rejected).
fn record_refusal(report: &mut ReportBuilder, error: &MemberError) -> Result<(), ConnectorError> {
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
    )
}

/// A contact as a batch member: a mapped field it has no value for is sent empty, which clears it.
fn member<'c>(
    c: &'c Contact,
    status: Option<&'static str>,
    merge_tags: &[(&'c str, &'c str)],
    tags: &'c [&'c str],
) -> Member<'c> {
    Member {
        email_address: c.email.trim(),
        status,
        merge_fields: merge_tags
            .iter()
            .map(|(field, tag)| (*tag, contact_value(c, field).unwrap_or("")))
            .collect(),
        tags,
    }
}

/// The contact's value for a mapped field.
fn contact_value<'a>(c: &'a Contact, field: &str) -> Option<&'a str> {
    match field {
        "first-name" => c.first_name.as_deref(),
        "last-name" => c.last_name.as_deref(),
        other => c.attribute(other),
    }
}

/// The subscriber hash: lowercase hex MD5 of the lowercased email.
fn subscriber_hash(email: &str) -> String {
    Md5::digest(email.trim().to_lowercase().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An export's settings, checked.
struct Settings<'a> {
    audience: &'a str,
    new_status: &'static str,
    first_name_tag: &'a str,
    last_name_tag: &'a str,
    tags: Vec<&'a str>,
    membership_tag: Option<&'a str>,
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
            check_merge_tag(key, tag)?;
            Ok(tag)
        };
        let membership_tag = config
            .get("membership-tag")
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let mut tags: Vec<&str> = config
            .get("tags")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        tags.extend(membership_tag);
        Ok(Settings {
            audience,
            new_status,
            first_name_tag: merge_tag("first-name-merge-field", "FNAME")?,
            last_name_tag: merge_tag("last-name-merge-field", "LNAME")?,
            tags,
            membership_tag,
        })
    }

    fn audience_path(&self) -> String {
        http::encode_component(self.audience)
    }

    /// Each mapped field other than the email, with the merge tag it goes to.
    fn merge_tags<'c>(&self, config: &'c ExportConfig) -> Vec<(&'c str, &'c str)>
    where
        'a: 'c,
    {
        config
            .fields
            .iter()
            .filter(|f| *f != "email")
            .map(|f| {
                let tag = match f.as_str() {
                    "first-name" => self.first_name_tag,
                    "last-name" => self.last_name_tag,
                    custom => custom,
                };
                (f.as_str(), tag)
            })
            .collect()
    }
}

fn check_merge_tag(key: &str, tag: &str) -> Result<(), ConnectorError> {
    if tag.is_empty()
        || tag.len() > 10
        || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(ConnectorError::invalid_config(format!(
            "{key} `{tag}` is not a Mailchimp merge tag (up to 10 letters, digits or _)"
        )));
    }
    Ok(())
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
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
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
    email_address: String,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
struct MemberError {
    email_address: String,
    error: String,
    #[serde(default = "generic")]
    error_code: String,
}

#[derive(Deserialize)]
struct MemberStatus {
    status: String,
}

#[derive(Deserialize)]
struct MergeFields {
    #[serde(default)]
    merge_fields: Vec<MergeField>,
}

#[derive(Deserialize)]
struct MergeField {
    tag: String,
}

#[derive(Deserialize)]
struct Segments {
    #[serde(default)]
    segments: Vec<Segment>,
}

#[derive(Deserialize)]
struct Segment {
    id: u64,
    name: String,
}

#[derive(Serialize)]
struct SegmentChange<'a> {
    members_to_remove: &'a [&'a str],
}

#[derive(Deserialize)]
struct SegmentResult {
    #[serde(default)]
    errors: Vec<SegmentError>,
}

#[derive(Deserialize)]
struct SegmentError {
    #[serde(default)]
    email_addresses: Vec<String>,
    error: String,
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
