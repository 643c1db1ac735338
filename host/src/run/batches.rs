//! Reading the segment: each profile is mapped to a contact, given its address and digest,
//! decided against the sync index (send, skip, duplicate...), and the contacts to send are cut
//! into batches; a row the source could not use is recorded with its reason. Runs on a
//! blocking thread; the batches go to the run through `emit`.

use anyhow::{Result, bail};

use super::counts::RunCounts;
use super::report::{IssueKind, RunIssue, Stage};
use super::sync::{Decision, SyncIndex, SyncState, digest, key_hash, person_hash};
use crate::contract::Contact;
use crate::email::{self, Unusable};
use crate::mapping::ResolvedMapping;
use crate::source::{Row, SkipReason, SkippedRow};

/// A piece of the segment: the contacts to send, and what was decided for the other profiles
/// read with them.
pub(crate) struct Batch {
    pub contacts: Vec<Contact>,
    /// For each contact, who it is.
    pub sent: Vec<SentContact>,
    /// The plan's counts for every profile read into this batch.
    pub counts: RunCounts,
    /// Profiles not sent, and why (duplicates, no address, still refused or kept out).
    pub issues: Vec<RunIssue>,
}

/// A contact handed to the connector.
pub(crate) struct SentContact {
    pub profile_id: String,
    /// [`person_hash`] of the profile id.
    pub person: u64,
    /// The normalised address (the sync key).
    pub key: String,
    pub digest: u64,
}

impl Batch {
    /// Whether the batch is ready to go: as many contacts as the connector takes, or as many
    /// rows read as a piece settles at once.
    fn is_full(&self, size: usize) -> bool {
        self.contacts.len() == size || self.counts.profiles >= MAX_PROFILES_A_BATCH
    }

    fn new(size: usize) -> Batch {
        Batch {
            contacts: Vec::with_capacity(size),
            sent: Vec::with_capacity(size),
            counts: RunCounts::default(),
            issues: vec![],
        }
    }
}

/// Profiles read into one batch at most, so that a delta run of unchanged profiles still
/// settles (and shows progress) regularly.
const MAX_PROFILES_A_BATCH: u64 = 50_000;

/// Profiles prepared before the index is searched for all of them at once.
const CHUNK: usize = 64;

/// A profile read, mapped and addressed, before its decision.
struct Read {
    profile_id: String,
    contact: Contact,
    /// Its address, or why it cannot be sent at all.
    address: Result<Addressed, Refusal>,
}

/// Why the host refuses a contact itself, before any vendor call.
struct Refusal {
    code: &'static str,
    message: String,
}

struct Addressed {
    /// The normalised address (the sync key).
    normal: String,
    key: u64,
    digest: u64,
    /// Where the sync index holds the contact, if it does.
    at: Option<usize>,
}

/// How a run reads its segment.
pub(crate) struct Reading<'a> {
    pub mapping: &'a ResolvedMapping,
    /// Contacts a batch holds at most (the connector's limit).
    pub size: usize,
    /// Unreadable rows tolerated before reading stops (`None`: any number).
    pub max_bad_rows: Option<u64>,
}

/// Reads every row, deciding each profile; `note` hears every decision (a dry run collects
/// examples from it); `emit` takes each batch, and reading stops when it returns false.
pub(crate) fn read(
    rows: Box<dyn Iterator<Item = Result<Row>> + Send>,
    how: &Reading,
    index: &mut SyncIndex,
    note: &mut dyn FnMut(Decision, &str),
    mut emit: impl FnMut(Batch) -> bool,
) -> Result<()> {
    let (mapping, size) = (how.mapping, how.size);
    let mut batch = Batch::new(size);
    let mut bad_rows = 0u64;
    let mut profiles = rows.peekable();
    let (mut chunk, mut keys, mut found) = (
        Vec::with_capacity(CHUNK),
        Vec::with_capacity(CHUNK),
        Vec::with_capacity(CHUNK),
    );
    while profiles.peek().is_some() {
        chunk.clear();
        for row in profiles.by_ref().take(CHUNK) {
            let profile = match row? {
                Row::Profile(profile) => profile,
                Row::Skipped(row) => {
                    if row.reason == SkipReason::Unreadable {
                        bad_rows += 1;
                        if let Some(max) = how.max_bad_rows
                            && bad_rows > max
                        {
                            bail!(
                                "more than {max} rows of the segment cannot be read (the last: {}: {}); fix the data, or allow more bad rows",
                                row.location,
                                row.detail
                            );
                        }
                    }
                    skip(row, &mut batch);
                    if batch.is_full(size) {
                        let full = std::mem::replace(&mut batch, Batch::new(size));
                        if !emit(full) {
                            return Ok(());
                        }
                    }
                    continue;
                }
            };
            let mut contact = mapping.contact(&profile);
            let address = match email::address(&contact.email) {
                Err(Unusable::Missing) => Err(Refusal {
                    code: "missing-email",
                    message: "The profile has no email address".into(),
                }),
                Err(Unusable::Invalid(why)) => Err(Refusal {
                    code: "invalid-email",
                    message: format!("Not an email address: {why}"),
                }),
                Ok(address) => match mapping.over_limit(&contact) {
                    Some(message) => Err(Refusal {
                        code: "value-too-long",
                        message,
                    }),
                    None if let Some(message) = control_character(&contact) => Err(Refusal {
                        code: "control-character",
                        message,
                    }),
                    None => {
                        contact.email = address.send;
                        Ok(Addressed {
                            key: key_hash(&address.key),
                            normal: address.key,
                            digest: digest(&contact),
                            at: None,
                        })
                    }
                },
            };
            chunk.push(Read {
                profile_id: profile.id,
                contact,
                address,
            });
        }
        keys.clear();
        keys.extend(
            chunk
                .iter()
                .filter_map(|r| Some(r.address.as_ref().ok()?.key)),
        );
        index.locate(&keys, &mut found);
        let addressed = chunk.iter_mut().filter_map(|r| r.address.as_mut().ok());
        for (address, at) in addressed.zip(&found) {
            address.at = *at;
        }
        for read in chunk.drain(..) {
            decide(read, index, note, &mut batch);
            if batch.is_full(size) {
                let full = std::mem::replace(&mut batch, Batch::new(size));
                if !emit(full) {
                    return Ok(());
                }
            }
        }
    }
    if batch.counts.profiles > 0 {
        emit(batch);
    }
    Ok(())
}

/// The first mapped value holding a control character (a NUL, an escape, a backspace...),
/// named: a vendor would store it as it is, to break what people and programs read later.
/// Tabs and line breaks are text (a multi-line cell of a spreadsheet) and pass.
fn control_character(contact: &Contact) -> Option<String> {
    let named = [
        ("email", Some(contact.email.as_str())),
        ("first-name", contact.first_name.as_deref()),
        ("last-name", contact.last_name.as_deref()),
    ];
    let attributes = contact
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.as_str())));
    named
        .into_iter()
        .chain(attributes)
        .find_map(|(field, value)| {
            let c = value?
                .chars()
                .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))?;
            Some(format!(
                "{} holds the control character U+{:04X}; vendors would store it as it is",
                crate::text::clean(field, crate::text::MAX_LABEL_CHARS),
                c as u32
            ))
        })
}

/// Records a row the source could not use.
fn skip(row: SkippedRow, batch: &mut Batch) {
    batch.counts.profiles += 1;
    let kind = match row.reason {
        SkipReason::Unreadable => {
            batch.counts.unreadable += 1;
            IssueKind::Unreadable
        }
        SkipReason::RepeatedId => {
            batch.counts.repeated_ids += 1;
            IssueKind::Duplicate
        }
        SkipReason::UnknownProfile => {
            batch.counts.unknown_profiles += 1;
            IssueKind::UnknownProfile
        }
    };
    batch.issues.push(RunIssue {
        profile_id: row.profile_id.unwrap_or_default(),
        email: String::new(),
        kind,
        stage: Stage::Skipped,
        code: row.reason.code().into(),
        message: format!("{}: {}", row.location, row.detail),
        since: None,
    });
}

/// Decides one profile into `batch`.
fn decide(
    read: Read,
    index: &mut SyncIndex,
    note: &mut dyn FnMut(Decision, &str),
    batch: &mut Batch,
) {
    let Read {
        profile_id,
        contact,
        address,
    } = read;
    batch.counts.profiles += 1;
    let person = person_hash(&profile_id);
    let Addressed {
        normal,
        key,
        digest,
        at,
    } = match address {
        Ok(address) => address,
        Err(Refusal { code, message }) => {
            // Still in the segment: what was sent for them before stays as it is.
            index.note_unusable(person);
            batch.counts.invalid += 1;
            batch.issues.push(RunIssue {
                profile_id,
                email: contact.email,
                kind: IssueKind::Invalid,
                stage: Stage::Skipped,
                code: code.into(),
                message,
                since: None,
            });
            return;
        }
    };
    let decision = index.decide_at(key, at, digest, person);
    decision.count(&mut batch.counts);
    note(decision, &contact.email);
    let skipped = |kind, code: &str, message: &str, since| RunIssue {
        profile_id: profile_id.clone(),
        email: contact.email.clone(),
        kind,
        stage: Stage::Skipped,
        code: code.to_string(),
        message: message.to_string(),
        since,
    };
    match decision {
        Decision::Duplicate => batch.issues.push(skipped(
            IssueKind::Duplicate,
            "duplicate-email",
            "Another profile of this export has the same email; sent once",
            None,
        )),
        Decision::StillRejected | Decision::StillSuppressed => {
            let kind = match decision {
                Decision::StillRejected => IssueKind::Rejected,
                _ => IssueKind::Suppressed,
            };
            let issue = match index.reason(key) {
                Some(r) => skipped(kind, &r.code, &r.message, Some(r.since.clone())),
                None => skipped(
                    kind,
                    "",
                    "Refused before; sent again once its data changes",
                    None,
                ),
            };
            batch.issues.push(issue);
        }
        // Refused or kept out by an earlier attempt of this run: listed again, as it was.
        Decision::Resumed(state @ (SyncState::Rejected | SyncState::Suppressed)) => {
            let kind = match state {
                SyncState::Rejected => IssueKind::Rejected,
                _ => IssueKind::Suppressed,
            };
            let (code, message) = index
                .reason(key)
                .map(|r| (r.code.clone(), r.message.clone()))
                .unwrap_or_default();
            batch.issues.push(RunIssue {
                stage: Stage::Sent,
                ..skipped(kind, &code, &message, None)
            });
        }
        d if d.sends() => {
            batch.contacts.push(contact);
            batch.sent.push(SentContact {
                profile_id,
                person,
                key: normal,
                digest,
            });
        }
        _ => {}
    }
}
