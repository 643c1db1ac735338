//! Mailchimp Marketing API 3.0 export connector. Contract: docs/vendors/mailchimp.md.
//!
//! Sends contacts with batch subscribe (`POST /lists/{audience}`, at most 500 members a call).
//! Mailchimp's batch has no `status_if_new`, and a status sent for an existing member changes it
//! (`pending` for someone who unsubscribed even mails them an opt-in request, section 11b). So a
//! batch goes in two steps: first with `update_existing: false` and `subscribed`, which creates
//! the new members and names the existing ones (`ERROR_CONTACT_EXISTS`); then those with
//! `update_existing: true` and no status at all, which updates their fields and never their
//! status. An existing member who is unsubscribed or cleaned is reported suppressed.
//!
//! With `new-status = pending` a batch would rest on an order of checks no source settles
//! (whether the batch refuses an existing member before it applies `pending` to them, which
//! mails an unsubscribed person an opt-in request): so each contact is instead one
//! `PUT /lists/{id}/members/{hash}` carrying `status_if_new: pending` and no `status`, which
//! the reference documents as applying to a new member only (section 5). An existing member's
//! status is never sent, whatever it is.
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

pub struct Mailchimp;

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
    const NAME: &'static str = "Mailchimp";
    /// The health check answers only a valid credential.
    const CREDENTIAL_CHECK: &'static str = "/ping";
    type Settings = Settings;

    fn describe() -> ConnectorInfo {
        Description::new("mailchimp", Self::NAME, env!("CARGO_PKG_VERSION"))
            .base_url("https://{dc}.api.mailchimp.com/3.0")
            .auth(AuthScheme::BasicSecretAsPassword("connector-host".into()))
            .setting(
                "audience-id",
                "Audience ID",
                "Audience -> Settings -> Audience name and defaults -> Audience ID (not the numeric web id).",
            )
            .optional_setting(
                "new-status",
                "Status of new contacts",
                "subscribed (default) or pending (Mailchimp sends a confirmation email first). Applies to new members only; an existing member's status is never changed.",
            )
            .optional_setting(
                "first-name-merge-field",
                "First-name merge field",
                "Merge tag for the first name (default FNAME).",
            )
            .optional_setting(
                "last-name-merge-field",
                "Last-name merge field",
                "Merge tag for the last name (default LNAME).",
            )
            .optional_setting(
                "tags",
                "Tags",
                "Comma-separated tags added to every exported contact, e.g. cdp:newsletter.",
            )
            .optional_setting(
                "membership-tag",
                "Membership tag",
                "A tag every contact the export sends carries and that leavers lose (needed by the untag leave action), e.g. cdp:in-newsletter.",
            )
            .field("first-name", "First name", MAX_TEXT_MERGE_FIELD)
            .field("last-name", "Last name", MAX_TEXT_MERGE_FIELD)
            .custom_fields(MAX_TEXT_MERGE_FIELD)
            .leave_action(
                "archive",
                "Archive",
                "Archives the member (DELETE member). Reversible: a contact who rejoins the segment is added back.",
                true,
            )
            .leave_action(
                "untag",
                "Remove the membership tag",
                "Removes the export's membership-tag from the member, who stays on the audience. Reversible: the tag returns when they rejoin.",
                true,
            )
            .leave_action(
                "unsubscribe",
                "Unsubscribe",
                "Unsubscribes the member. Irreversible: Mailchimp lets only the contact subscribe again.",
                false,
            )
            .max_batch_size(MAX_BATCH)
            // Mailchimp allows 10 simultaneous connections per account; the 11th gets 429.
            .max_concurrent_requests(10)
            .build()
    }

    fn vendor_error(response: &Response) -> ConnectorError {
        vendor_error(response, "")
    }

    fn validate(export: &Export<Settings>) -> Result<(), ConnectorError> {
        let settings = &export.settings;
        let audience = export.url(&format!("/lists/{}", settings.audience_path()));
        let response = http::get(&audience)?;
        if !response.is_success() {
            return Err(vendor_error(&response, &settings.audience));
        }
        if export.leave_action.as_deref() == Some("untag") && settings.membership_tag.is_none() {
            return Err(ConnectorError::invalid_config(
                "the untag leave action needs the membership-tag setting: the tag the export puts on every contact it sends and removes from those who leave",
            ));
        }
        let merged: Vec<&str> = settings
            .merge_tags(export)
            .into_iter()
            .map(|(_, tag)| tag)
            .collect();
        if merged.is_empty() {
            return Ok(());
        }
        let response = http::get(&format!("{audience}/merge-fields?count=1000"))?;
        if !response.is_success() {
            return Err(vendor_error(&response, &settings.audience));
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
        export: &Export<Settings>,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        let settings = &export.settings;
        let report = ReportBuilder::new(Self::NAME, contacts);
        if settings.pending {
            return pending_upserts(export, contacts, report);
        }
        let mut report = report;
        let merge_tags = settings.merge_tags(export);
        let member = |c, status| member(c, status, &merge_tags, &settings.tags);
        let url = export.url(&format!("/lists/{}", settings.audience_path()));

        // Step 1: new members, subscribed.
        let first = BatchRequest {
            members: contacts
                .iter()
                .map(|c| member(c, Some("subscribed")))
                .collect(),
            update_existing: false,
            sync_tags: false,
        };
        let result = batch(&url, &first, &settings.audience)?;
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
            let result = batch(&url, &second, &settings.audience)?;
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
        export: &Export<Settings>,
        action: &str,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        let settings = &export.settings;
        let members = export.url(&format!("/lists/{}/members", settings.audience_path()));
        let mut report = ReportBuilder::new(Self::NAME, contacts);

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
                _ => return Err(vendor_error(&answer, &settings.audience)),
            }
        }
        if to_act.is_empty() {
            return report.finish(0, acted);
        }
        acted += match action {
            "archive" => archive(&members, &to_act, &mut report, &settings.audience)?,
            "untag" => untag(export, &to_act, &mut report)?,
            "unsubscribe" => unsubscribe(export, &to_act, &mut report)?,
            other => {
                return Err(ConnectorError::invalid_config(format!(
                    "Mailchimp has no leave action `{other}`"
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
    export: &Export<Settings>,
    emails: &[&str],
    report: &mut ReportBuilder,
) -> Result<u32, ConnectorError> {
    let settings = &export.settings;
    let Some(tag) = &settings.membership_tag else {
        return Err(ConnectorError::invalid_config(
            "the untag leave action needs the membership-tag setting",
        ));
    };
    let list = export.url(&format!("/lists/{}", settings.audience_path()));
    // Only the ids and names: counting each tag's members is work the vendor can skip.
    let answer = http::get(&format!(
        "{list}/segments?type=static&count=1000&fields=segments.id,segments.name"
    ))?;
    if !answer.is_success() {
        return Err(vendor_error(&answer, &settings.audience));
    }
    let segments: Segments = answer.json()?;
    let Some(segment) = segments.segments.iter().find(|s| &s.name == tag) else {
        return Ok(emails.len() as u32); // nobody carries the tag
    };
    let body = SegmentChange {
        members_to_remove: emails,
    };
    let answer = http::post_json(&format!("{list}/segments/{}", segment.id), &body)?;
    if !answer.is_success() {
        return Err(vendor_error(&answer, &settings.audience));
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
    export: &Export<Settings>,
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
    let settings = &export.settings;
    let url = export.url(&format!("/lists/{}", settings.audience_path()));
    let result = batch(&url, &request, &settings.audience)?;
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

/// Pending mode: one `PUT` a contact with `status_if_new: pending` (and no `status`), so that
/// only a new member is made pending; an existing one has its fields updated, its status left
/// alone, and is reported suppressed when it is unsubscribed or cleaned.
fn pending_upserts(
    export: &Export<Settings>,
    contacts: &[Contact],
    mut report: ReportBuilder,
) -> Result<BatchReport, ConnectorError> {
    #[derive(Serialize)]
    struct Upsert<'a> {
        email_address: &'a str,
        status_if_new: &'static str,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        merge_fields: BTreeMap<&'a str, &'a str>,
    }
    let settings = &export.settings;
    let merge_tags = settings.merge_tags(export);
    let members = export.url(&format!("/lists/{}/members", settings.audience_path()));
    let upserts: Vec<Request> = contacts
        .iter()
        .map(|c| {
            let m = member(c, None, &merge_tags, &[]);
            Request::json(
                Method::Put,
                format!("{members}/{}", subscriber_hash(&c.email)),
                &Upsert {
                    email_address: m.email_address,
                    status_if_new: "pending",
                    merge_fields: m.merge_fields,
                },
            )
        })
        .collect::<Result<_, _>>()?;
    let (mut created, mut updated) = (0, 0);
    let mut tagged = vec![];
    for (contact, answer) in contacts.iter().zip(http::send_all(&upserts)) {
        let answer = answer?;
        let email = contact.email.trim();
        if answer.is_success() {
            let status = answer.json::<MemberStatus>()?.status;
            if KEPT_OUT.contains(&status.as_str()) {
                report.issue(
                    email,
                    IssueKind::Suppressed,
                    status.clone(),
                    format!("The member is {status}: kept out, never resubscribed"),
                )?;
                continue;
            }
            // A new member is pending now; an existing one keeps the status it had.
            if status == "pending" {
                created += 1;
            } else {
                updated += 1;
            }
            tagged.push(email);
        } else if answer.status == 400 {
            let error: ErrorBody = answer.json().unwrap_or_default();
            record_refusal(
                &mut report,
                &MemberError {
                    email_address: email.to_string(),
                    error: error.detail,
                    error_code: error.title,
                },
            )?;
        } else {
            return Err(vendor_error(&answer, &settings.audience));
        }
    }
    if !settings.tags.is_empty() && !tagged.is_empty() {
        tag_members(&members, &tagged, &settings.tags, &settings.audience)?;
    }
    report.finish(created, updated)
}

/// Puts `tags` on each member (a tag added through the member's own endpoint, as a `PUT`
/// cannot tag an existing member).
fn tag_members(
    members: &str,
    emails: &[&str],
    tags: &[String],
    audience: &str,
) -> Result<(), ConnectorError> {
    #[derive(Serialize)]
    struct Tag<'a> {
        name: &'a str,
        status: &'static str,
    }
    #[derive(Serialize)]
    struct Tags<'a> {
        tags: Vec<Tag<'a>>,
    }
    let body = Tags {
        tags: tags
            .iter()
            .map(|name| Tag {
                name,
                status: "active",
            })
            .collect(),
    };
    let requests: Vec<Request> = emails
        .iter()
        .map(|e| {
            Request::json(
                Method::Post,
                format!("{members}/{}/tags", subscriber_hash(e)),
                &body,
            )
        })
        .collect::<Result<_, _>>()?;
    for answer in http::send_all(&requests) {
        let answer = answer?;
        if !answer.is_success() {
            return Err(vendor_error(&answer, audience));
        }
    }
    Ok(())
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
    tags: &'c [String],
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
#[derive(Deserialize)]
#[serde(try_from = "GivenSettings")]
pub struct Settings {
    audience: String,
    /// New members start `pending` (a confirmation email) rather than `subscribed`.
    pending: bool,
    first_name_tag: String,
    last_name_tag: String,
    tags: Vec<String>,
    membership_tag: Option<String>,
}

/// The settings as an export gives them.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct GivenSettings {
    audience_id: String,
    new_status: Option<String>,
    first_name_merge_field: Option<String>,
    last_name_merge_field: Option<String>,
    tags: Option<String>,
    membership_tag: Option<String>,
}

impl TryFrom<GivenSettings> for Settings {
    type Error = String;

    fn try_from(given: GivenSettings) -> Result<Settings, String> {
        let audience = given.audience_id;
        if !audience.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "audience-id `{audience}` is not a Mailchimp audience ID (letters and digits, e.g. 1a2b3c4d5e)"
            ));
        }
        let pending = match given.new_status.map(|s| s.to_ascii_lowercase()).as_deref() {
            None | Some("subscribed") => false,
            Some("pending") => true,
            Some(other) => {
                return Err(format!(
                    "new-status `{other}` must be subscribed or pending"
                ));
            }
        };
        let merge_tag = |key: &str, given: Option<String>, default: &str| {
            let tag = given.unwrap_or_else(|| default.into());
            check_merge_tag(key, &tag).map(|()| tag)
        };
        let mut tags: Vec<String> = given
            .tags
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        tags.extend(given.membership_tag.clone());
        Ok(Settings {
            audience,
            pending,
            first_name_tag: merge_tag(
                "first-name-merge-field",
                given.first_name_merge_field,
                "FNAME",
            )?,
            last_name_tag: merge_tag(
                "last-name-merge-field",
                given.last_name_merge_field,
                "LNAME",
            )?,
            tags,
            membership_tag: given.membership_tag,
        })
    }
}

impl Settings {
    fn audience_path(&self) -> String {
        http::encode_component(&self.audience)
    }

    /// Each mapped field other than the email, with the merge tag it goes to.
    fn merge_tags<'c>(&'c self, export: &'c Export<Settings>) -> Vec<(&'c str, &'c str)> {
        export
            .fields
            .iter()
            .filter(|f| *f != "email")
            .map(|f| {
                let tag = match f.as_str() {
                    "first-name" => self.first_name_tag.as_str(),
                    "last-name" => self.last_name_tag.as_str(),
                    custom => custom,
                };
                (f.as_str(), tag)
            })
            .collect()
    }
}

fn check_merge_tag(key: &str, tag: &str) -> Result<(), String> {
    if tag.is_empty()
        || tag.len() > 10
        || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!(
            "{key} `{tag}` is not a Mailchimp merge tag (up to 10 letters, digits or _)"
        ));
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
    tags: &'a [String],
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

/// A problem document's title and detail (Mailchimp's error answers).
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
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
