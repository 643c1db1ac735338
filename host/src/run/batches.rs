//! Reading the segment: each profile is mapped to a contact, given its address and digest,
//! decided against the sync index (send, skip, duplicate...), and the contacts to send are cut
//! into batches. Runs on a blocking thread; the batches go to the run through `emit`.

use anyhow::Result;

use super::counts::RunCounts;
use super::report::{IssueKind, RunIssue, Stage};
use super::sync::{Decision, SyncIndex, digest, key_hash};
use crate::contract::Contact;
use crate::email;
use crate::mapping::ResolvedMapping;
use crate::source::Profile;

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
    /// The normalised address (the sync key).
    pub key: String,
    pub digest: u64,
}

impl Batch {
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

/// Reads every profile, deciding each; `note` hears every decision (a dry run collects examples
/// from it); `emit` takes each batch, and reading stops when it returns false.
pub(crate) fn read(
    profiles: Box<dyn Iterator<Item = Result<Profile>> + Send>,
    mapping: &ResolvedMapping,
    index: &mut SyncIndex,
    size: usize,
    note: &mut dyn FnMut(Decision, &str),
    mut emit: impl FnMut(Batch) -> bool,
) -> Result<()> {
    let mut batch = Batch::new(size);
    for profile in profiles {
        let profile = profile?;
        batch.counts.profiles += 1;
        let mut contact = mapping.contact(&profile);
        match email::address(&contact.email) {
            None => {
                batch.counts.invalid += 1;
                batch.issues.push(RunIssue {
                    profile_id: profile.id,
                    email: String::new(),
                    kind: IssueKind::Invalid,
                    stage: Stage::Skipped,
                    code: "missing-email".into(),
                    message: "The profile has no email address".into(),
                    since: None,
                });
            }
            Some(address) => {
                contact.email = address.send;
                let key = key_hash(&address.key);
                let digest = digest(&contact);
                let decision = index.decide(key, digest);
                decision.count(&mut batch.counts);
                note(decision, &contact.email);
                let skipped = |kind, code: &str, message: &str, since| RunIssue {
                    profile_id: profile.id.clone(),
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
                    d if d.sends() => {
                        batch.contacts.push(contact);
                        batch.sent.push(SentContact {
                            profile_id: profile.id,
                            key: address.key,
                            digest,
                        });
                    }
                    _ => {}
                }
            }
        }
        if batch.contacts.len() == size || batch.counts.profiles >= MAX_PROFILES_A_BATCH {
            let full = std::mem::replace(&mut batch, Batch::new(size));
            if !emit(full) {
                return Ok(());
            }
        }
    }
    if batch.counts.profiles > 0 {
        emit(batch);
    }
    Ok(())
}
