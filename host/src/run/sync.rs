//! Sync state: what the vendor acknowledged for an export, contact by contact (the normalised
//! address, a digest of the mapped fields sent, the outcome). A run reads it once into a compact
//! in-memory index, sends only what is new, changed, returning or unsettled, finds who left the
//! segment, and records each settled contact through the [`RunJournal`].

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::counts::RunCounts;
use super::report::RunIssue;
use crate::contract::Contact;

/// Where an export's contact stands with the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum SyncState {
    Created = 1,
    Updated = 2,
    /// Kept out by the vendor (unsubscribed, cleaned...).
    Suppressed = 3,
    /// The vendor refused this data.
    Rejected = 4,
    /// Left the segment; the leave action was applied (or there was none).
    Left = 5,
    /// Left the segment while the vendor kept them out already: left untouched.
    LeftUntouched = 6,
    /// Left the segment; the vendor refused the leave action.
    LeftRefused = 7,
    /// Left the segment, and the leave action was asked of the vendor, its answer not yet
    /// recorded (written before the call, so that a run continued after a crash knows a contact
    /// the vendor no longer has is its own doing).
    Leaving = 8,
    /// Left the segment while the export had no leave action: nothing was done at the vendor,
    /// and a leave action added later applies to them.
    Departed = 9,
}

impl SyncState {
    /// The state stored as this code (see the `repr`).
    pub fn from_code(code: u8) -> Option<SyncState> {
        use SyncState::*;
        [
            Created,
            Updated,
            Suppressed,
            Rejected,
            Left,
            LeftUntouched,
            LeftRefused,
            Leaving,
            Departed,
        ]
        .into_iter()
        .find(|s| *s as u8 == code)
    }

    /// At the vendor as the export sent them: a leaver if they leave the segment (one whose
    /// leave action was asked but not recorded stays one until it is).
    fn delivered(self) -> bool {
        matches!(
            self,
            SyncState::Created | SyncState::Updated | SyncState::Leaving
        )
    }

    /// Settled as a leaver (whatever the vendor made of it).
    fn left(self) -> bool {
        matches!(
            self,
            SyncState::Left
                | SyncState::LeftUntouched
                | SyncState::LeftRefused
                | SyncState::Leaving
                | SyncState::Departed
        )
    }
}

impl std::fmt::Display for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncState::Created => "created",
            SyncState::Updated => "updated",
            SyncState::Suppressed => "suppressed",
            SyncState::Rejected => "rejected",
            SyncState::Left => "left",
            SyncState::LeftUntouched => "left untouched",
            SyncState::LeftRefused => "left refused",
            SyncState::Leaving => "leaving",
            SyncState::Departed => "departed",
        })
    }
}

/// One contact of an export's sync state, as the journal reads it back.
pub struct Synced<'a> {
    /// The normalised address (see [`crate::email`]).
    pub email: &'a str,
    /// The person it was sent for ([`person_hash`] of the profile id; 0: not known, for
    /// contacts settled before the host kept it).
    pub person: u64,
    pub digest: u64,
    pub state: SyncState,
    /// Whether an earlier attempt of the run being made settled it.
    pub this_run: bool,
    /// For a contact the vendor refused or keeps out: why, and since when.
    pub reason: Option<SyncReason<'a>>,
}

/// Why the vendor refused or keeps out a contact, and since when.
pub struct SyncReason<'a> {
    pub code: &'a str,
    pub message: &'a str,
    /// When it first happened (RFC 3339).
    pub since: &'a str,
}

/// [`SyncReason`], kept.
pub(crate) struct Reason {
    pub code: String,
    pub message: String,
    pub since: String,
}

/// A contact whose sync state a settlement sets.
#[derive(Debug, Clone)]
pub struct SettledContact {
    /// The normalised address.
    pub email: String,
    /// The person ([`person_hash`] of the profile id) it was sent for.
    pub person: u64,
    pub digest: u64,
    pub state: SyncState,
    /// For a suppressed or rejected contact: the vendor's code and message.
    pub reason: Option<(String, String)>,
}

/// What one piece of a run settled, recorded at once.
pub struct Settlement<'a> {
    /// Contacts whose sync state changes (acknowledged by the vendor, or leavers settled).
    pub contacts: &'a [SettledContact],
    /// Contacts of this piece that were not delivered, with reasons.
    pub issues: &'a [RunIssue],
    /// The attempt's counts, this piece included.
    pub counts: &'a RunCounts,
    /// What the attempt cost so far (requests, retries, batches, time), so that an attempt cut
    /// short still counts in its run's figures.
    pub figures: super::report::Figures,
}

/// Where an export's sync state and a run's record live. [`crate::State`] keeps them in its
/// database; an embedder may keep them elsewhere. Without a journal every run sends every
/// contact and nobody is known to leave.
pub trait RunJournal: Send + Sync {
    /// Calls `each` for every contact of the export's sync state, in any order; a contact
    /// given more than once is in the state it was given last.
    fn synced(&self, each: &mut dyn FnMut(Synced<'_>) -> Result<()>) -> Result<()>;

    /// About how many contacts [`RunJournal::synced`] gives (0 if unknown): the run sizes its
    /// index with it rather than growing it.
    fn size_hint(&self) -> u64 {
        0
    }

    /// Records a settled piece of the run durably, before the run counts it as done: the
    /// contacts' new sync state, the undelivered contacts and the counts so far. An error fails
    /// the run.
    fn settle(&self, settlement: &Settlement<'_>) -> Result<()>;

    /// Records the attempt's requests, retries and time so far, before each request leaves
    /// (requests sent together share one call), so that an attempt cut short counts every
    /// request the vendor may have received. An error is logged and the request goes on.
    fn note_figures(&self, _figures: &super::report::Figures) -> Result<()> {
        Ok(())
    }
}

/// The 64-bit key of a normalised address in the run's index.
pub(crate) fn key_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// Who a contact is: a stable 64-bit hash of the profile id it was sent for (never 0, which
/// stands for "not known"). Stored in sync states: the algorithm must never change.
pub fn person_hash(profile_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(profile_id.as_bytes(), 0x7065_7273_6f6e).max(1)
}

/// A stable digest of what is sent for a contact: its address as sent and every mapped value.
/// Stored in the sync state, so the algorithm (XXH3-64 over length-prefixed fields) must never
/// change without migrating it.
pub(crate) fn digest(contact: &Contact) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut field = |tag: u8, value: Option<&str>| {
        hasher.update(&[tag]);
        match value {
            Some(v) => {
                hasher.update(&(v.len() as u64).to_le_bytes());
                hasher.update(v.as_bytes());
            }
            None => hasher.update(&u64::MAX.to_le_bytes()),
        }
    };
    field(b'e', Some(&contact.email));
    field(b'f', contact.first_name.as_deref());
    field(b'l', contact.last_name.as_deref());
    for (key, value) in &contact.attributes {
        field(b'k', Some(key));
        field(b'v', Some(value));
    }
    hasher.digest()
}

/// What the run decides for one contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    New,
    Changed,
    Returning,
    Resent,
    Unchanged,
    StillRejected,
    StillSuppressed,
    Duplicate,
    /// Settled by an earlier attempt of this run, in this state.
    Resumed(SyncState),
}

impl Decision {
    /// Whether the contact goes to the vendor.
    pub(crate) fn sends(self) -> bool {
        matches!(
            self,
            Decision::New | Decision::Changed | Decision::Returning | Decision::Resent
        )
    }

    /// Counts the decision in the plan (and a resumed contact's earlier outcome).
    pub(crate) fn count(self, counts: &mut RunCounts) {
        match self {
            Decision::New => counts.new += 1,
            Decision::Changed => counts.changed += 1,
            Decision::Returning => counts.returning += 1,
            Decision::Resent => counts.resent += 1,
            Decision::Unchanged => counts.unchanged += 1,
            Decision::StillRejected => counts.still_rejected += 1,
            Decision::StillSuppressed => counts.still_suppressed += 1,
            Decision::Duplicate => counts.duplicates += 1,
            Decision::Resumed(state) => {
                counts.resumed += 1;
                match state {
                    SyncState::Created => counts.created += 1,
                    SyncState::Updated => counts.updated += 1,
                    SyncState::Suppressed | SyncState::LeftUntouched => counts.suppressed += 1,
                    _ => counts.rejected += 1,
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u64,
    digest: u64,
    /// The person it was sent for (0: not known).
    person: u64,
    /// The order the journal gave it in (in what would be padding): the later entry of a
    /// contact given twice is the one kept.
    order: u32,
    state: SyncState,
    this_run: bool,
}

/// The sync state of an export in memory: 32 bytes a contact, sorted by key hash, with a bit a
/// contact for "seen in this run's segment" (leavers are the delivered contacts not seen, whose
/// person is not in the segment either). Lookups go through a directory of the key's top bits:
/// one or two cache misses a contact, where a binary search over a million entries takes a
/// dozen.
pub(crate) struct SyncIndex {
    entries: Vec<Entry>,
    directory: Directory,
    seen: Vec<u64>,
    /// People of the segment not found under the address they were sent for (new members,
    /// changed addresses) and those with no usable address now: the contacts sent for them
    /// before are not leavers (8 bytes a person, only when there is a sync state).
    elsewhere: Vec<u64>,
    unusable: Vec<u64>,
    /// Keys of contacts not in the sync state, to spot their duplicates.
    fresh: std::collections::HashSet<u64>,
    /// Why the vendor refused or keeps out the contacts it did.
    reasons: std::collections::HashMap<u64, Reason>,
    full: bool,
}

impl SyncIndex {
    /// Reads the journal's sync state (none without a journal). A `full` run sends every
    /// contact whatever its state, but still finds who left.
    pub(crate) fn load(journal: Option<&dyn RunJournal>, full: bool) -> Result<SyncIndex> {
        let (mut entries, mut reasons) = (vec![], std::collections::HashMap::new());
        if let Some(journal) = journal {
            entries.reserve_exact(journal.size_hint() as usize);
            journal.synced(&mut |s| {
                let key = key_hash(s.email);
                entries.push(Entry {
                    key,
                    digest: s.digest,
                    person: s.person,
                    order: entries.len() as u32,
                    state: s.state,
                    this_run: s.this_run,
                });
                if let Some(r) = s.reason {
                    reasons.insert(
                        key,
                        Reason {
                            code: r.code.to_string(),
                            message: r.message.to_string(),
                            since: r.since.to_string(),
                        },
                    );
                }
                Ok(())
            })?;
        }
        // In place; of a contact given twice, the later entry ends last and is kept.
        entries.sort_unstable_by_key(|e| (e.key, e.order));
        let mut kept = 0;
        for i in 0..entries.len() {
            if kept > 0 && entries[kept - 1].key == entries[i].key {
                kept -= 1;
            }
            entries[kept] = entries[i];
            kept += 1;
        }
        entries.truncate(kept);
        entries.shrink_to_fit();
        let seen = vec![0; entries.len().div_ceil(64)];
        Ok(SyncIndex {
            directory: Directory::new(&entries),
            entries,
            seen,
            elsewhere: vec![],
            unusable: vec![],
            fresh: Default::default(),
            reasons,
            full,
        })
    }

    /// Why the vendor refused or keeps out this contact, if it did.
    pub(crate) fn reason(&self, key: u64) -> Option<&Reason> {
        self.reasons.get(&key)
    }

    /// Where each of `keys` is in the index, into `found`. All at once, so that the memory
    /// reads of one overlap those of the others (the index is far larger than the caches).
    pub(crate) fn locate(&self, keys: &[u64], found: &mut Vec<Option<usize>>) {
        found.clear();
        if self.entries.is_empty() {
            found.resize(keys.len(), None);
            return;
        }
        let starts: Vec<usize> = keys
            .iter()
            .map(|k| self.directory.starts[self.directory.bucket(*k)] as usize)
            .collect();
        // Touch each bucket's first entry: independent loads the processor runs side by side,
        // leaving the lines in the cache for the searches below.
        let touched = starts.iter().fold(0u64, |acc, &from| {
            acc ^ self.entries[from.min(self.entries.len() - 1)].key
        });
        std::hint::black_box(touched);
        found.extend(keys.iter().map(|k| self.directory.find(&self.entries, *k)));
    }

    /// Decides what to do with a contact of the segment (`person`'s, at the address `key`),
    /// and remembers it was seen.
    #[cfg(test)]
    pub(crate) fn decide(&mut self, key: u64, digest: u64, person: u64) -> Decision {
        let at = self.directory.find(&self.entries, key);
        self.decide_at(key, at, digest, person)
    }

    /// A person of the segment whose address cannot be used now: the contact sent for them
    /// before stays as it is.
    pub(crate) fn note_unusable(&mut self, person: u64) {
        if !self.entries.is_empty() {
            self.unusable.push(person);
        }
    }

    /// [`SyncIndex::decide`] for a contact [`SyncIndex::locate`] found (or not) at `at`.
    pub(crate) fn decide_at(
        &mut self,
        key: u64,
        at: Option<usize>,
        digest: u64,
        person: u64,
    ) -> Decision {
        if !self.entries.is_empty() && at.is_none_or(|i| self.entries[i].person != person) {
            self.elsewhere.push(person);
        }
        let Some(i) = at else {
            return if self.fresh.insert(key) {
                Decision::New
            } else {
                Decision::Duplicate
            };
        };
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.seen[word] & bit != 0 {
            return Decision::Duplicate;
        }
        self.seen[word] |= bit;
        let entry = self.entries[i];
        let same = entry.digest == digest;
        match entry.state {
            state if entry.this_run && same && !state.left() => Decision::Resumed(state),
            state if state.left() && state != SyncState::LeftUntouched => Decision::Returning,
            _ if self.full => Decision::Resent,
            _ if !same => Decision::Changed,
            SyncState::Created | SyncState::Updated => Decision::Unchanged,
            SyncState::Rejected => Decision::StillRejected,
            _ => Decision::StillSuppressed,
        }
    }

    /// Who left the segment: contacts the export sent before whose address the segment did not
    /// have and whose person is not in it either (a person still in the segment under an
    /// unusable address is kept as they are; under a new address, their old one is a leaver
    /// only when `action` is reversible). `action`: the export's leave action, if any, and
    /// whether it is reversible; with one, contacts that departed while the export had none
    /// are leavers too. Also counts, into `counts`, the leavers an earlier attempt of this run
    /// settled already.
    pub(crate) fn leavers(&mut self, counts: &mut RunCounts, action: Option<bool>) -> Leavers {
        self.elsewhere.sort_unstable();
        self.unusable.sort_unstable();
        let mut leavers = Leavers::default();
        for (i, entry) in self.entries.iter().enumerate() {
            if self.seen[i / 64] & (1 << (i % 64)) != 0 {
                continue;
            }
            let departed = entry.state == SyncState::Departed;
            let acted_on =
                entry.state.delivered() || (departed && !entry.this_run && action.is_some());
            if acted_on {
                let known = entry.person != 0;
                let unusable = known && self.unusable.binary_search(&entry.person).is_ok();
                let moved = known && self.elsewhere.binary_search(&entry.person).is_ok();
                if unusable || (moved && action != Some(true)) {
                    counts.kept += 1;
                } else {
                    leavers.act.insert(entry.key, entry.state);
                }
            } else if entry.this_run && entry.state.left() {
                counts.leaving += 1;
                match entry.state {
                    SyncState::LeftUntouched => counts.left_untouched += 1,
                    SyncState::LeftRefused => counts.left_refused += 1,
                    _ => counts.left += 1,
                }
                if matches!(
                    entry.state,
                    SyncState::LeftUntouched | SyncState::LeftRefused
                ) {
                    leavers.earlier.insert(entry.key, entry.state);
                }
            }
        }
        leavers
    }
}

/// The leavers of a run, by address key.
#[derive(Default)]
pub(crate) struct Leavers {
    /// To act on (or record as departed), with the state they had.
    pub act: std::collections::HashMap<u64, SyncState>,
    /// Settled by an earlier attempt of this run with an answer to report (left untouched or
    /// refused), already counted.
    pub earlier: std::collections::HashMap<u64, SyncState>,
}

/// Where each range of keys starts in the sorted entries: `starts[b]` is the first entry whose
/// key's top bits are `b` or more. About four entries a bucket (keys are uniform hashes), for
/// one byte of directory a contact.
struct Directory {
    starts: Vec<u32>,
    /// How far a key shifts right to give its bucket.
    shift: u32,
}

impl Directory {
    fn new(entries: &[Entry]) -> Directory {
        let buckets = (entries.len() / 4).max(1).next_power_of_two();
        let shift = 64 - buckets.trailing_zeros();
        let mut directory = Directory {
            starts: Vec::with_capacity(buckets + 1),
            shift,
        };
        let mut at = 0;
        for bucket in 0..buckets {
            while at < entries.len() && directory.bucket(entries[at].key) < bucket {
                at += 1;
            }
            directory.starts.push(at as u32);
        }
        directory.starts.push(entries.len() as u32);
        directory
    }

    fn bucket(&self, key: u64) -> usize {
        key.checked_shr(self.shift).unwrap_or(0) as usize
    }

    /// The position of `key` in `entries` (sorted by key), if it is there.
    fn find(&self, entries: &[Entry], key: u64) -> Option<usize> {
        let b = self.bucket(key);
        let (from, to) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        entries[from..to]
            .iter()
            .position(|e| e.key == key)
            .map(|i| from + i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<(&'static str, u64, SyncState, bool)>);

    impl RunJournal for Fixed {
        fn synced(&self, each: &mut dyn FnMut(Synced<'_>) -> Result<()>) -> Result<()> {
            for (email, digest, state, this_run) in &self.0 {
                each(Synced {
                    email,
                    person: person_hash(email),
                    digest: *digest,
                    state: *state,
                    this_run: *this_run,
                    reason: None,
                })?;
            }
            Ok(())
        }
        fn settle(&self, _: &Settlement<'_>) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_contact_is_decided_by_its_sync_state_and_the_unseen_ones_are_leavers() {
        use SyncState::*;
        let journal = Fixed(vec![
            ("same@x.io", 1, Updated, false),
            ("changed@x.io", 1, Created, false),
            ("refused@x.io", 1, Rejected, false),
            ("refused-fixed@x.io", 1, Rejected, false),
            ("out@x.io", 1, Suppressed, false),
            ("back@x.io", 1, Left, false),
            ("earlier@x.io", 7, Created, true),
            ("gone@x.io", 1, Created, false),
            ("gone-earlier@x.io", 1, Left, true),
            ("gone-long-ago@x.io", 1, Left, false),
            // Given twice (a sync log over the folded state): the later entry counts.
            ("relogged@x.io", 1, Created, false),
            ("relogged@x.io", 2, Left, false),
        ]);
        let mut index = SyncIndex::load(Some(&journal), false).unwrap();
        let mut decide =
            |email: &str, digest| index.decide(key_hash(email), digest, person_hash(email));
        assert_eq!(decide("same@x.io", 1), Decision::Unchanged);
        assert_eq!(decide("same@x.io", 1), Decision::Duplicate);
        assert_eq!(decide("changed@x.io", 2), Decision::Changed);
        assert_eq!(decide("refused@x.io", 1), Decision::StillRejected);
        assert_eq!(decide("refused-fixed@x.io", 2), Decision::Changed);
        assert_eq!(decide("out@x.io", 1), Decision::StillSuppressed);
        assert_eq!(decide("back@x.io", 1), Decision::Returning);
        assert_eq!(decide("earlier@x.io", 7), Decision::Resumed(Created));
        assert_eq!(decide("new@x.io", 1), Decision::New);
        assert_eq!(decide("new@x.io", 1), Decision::Duplicate);
        assert_eq!(decide("relogged@x.io", 2), Decision::Returning);
        let mut counts = RunCounts::default();
        let leavers = index.leavers(&mut counts, Some(false));
        let acted: Vec<u64> = leavers.act.keys().copied().collect();
        assert_eq!(acted, [key_hash("gone@x.io")]);
        assert_eq!(
            (counts.leaving, counts.left),
            (1, 1),
            "the leaver settled earlier"
        );

        let mut full = SyncIndex::load(Some(&journal), true).unwrap();
        let decide = |index: &mut SyncIndex, email: &str, digest| {
            index.decide(key_hash(email), digest, person_hash(email))
        };
        assert_eq!(decide(&mut full, "same@x.io", 1), Decision::Resent);
        assert_eq!(
            decide(&mut full, "earlier@x.io", 7),
            Decision::Resumed(Created)
        );
    }

    #[test]
    fn a_person_still_in_the_segment_is_no_leaver_whatever_became_of_their_address() {
        use SyncState::*;
        struct People(Vec<(&'static str, &'static str, SyncState)>);
        impl RunJournal for People {
            fn synced(&self, each: &mut dyn FnMut(Synced<'_>) -> Result<()>) -> Result<()> {
                for (email, person, state) in &self.0 {
                    each(Synced {
                        email,
                        person: person_hash(person),
                        digest: 1,
                        state: *state,
                        this_run: false,
                        reason: None,
                    })?;
                }
                Ok(())
            }
            fn settle(&self, _: &Settlement<'_>) -> Result<()> {
                Ok(())
            }
        }
        let journal = People(vec![
            ("typo@x.io", "p1", Created),
            ("old@x.io", "p2", Updated),
            ("gone@x.io", "p3", Created),
            ("quiet@x.io", "p4", Departed),
            ("kept@x.io", "p5", Created),
        ]);
        let read = |action: Option<bool>| {
            let mut index = SyncIndex::load(Some(&journal), false).unwrap();
            // p1's address became unusable; p2 moved to a new one; p5 is as it was; p3 and
            // p4 left.
            index.note_unusable(person_hash("p1"));
            index.decide(key_hash("new@x.io"), 1, person_hash("p2"));
            index.decide(key_hash("kept@x.io"), 1, person_hash("p5"));
            let mut counts = RunCounts::default();
            let leavers = index.leavers(&mut counts, action);
            let mut acted: Vec<u64> = leavers.act.keys().copied().collect();
            acted.sort();
            (acted, counts.kept)
        };
        let keys = |emails: &[&str]| {
            let mut keys: Vec<u64> = emails.iter().map(|e| key_hash(e)).collect();
            keys.sort();
            keys
        };
        // An irreversible action: only the person who left; the old address of the person who
        // moved and the unusable one are kept.
        assert_eq!(read(Some(false)), (keys(&["gone@x.io", "quiet@x.io"]), 2));
        // A reversible one reaches the moved person's old address too.
        assert_eq!(
            read(Some(true)),
            (keys(&["gone@x.io", "old@x.io", "quiet@x.io"]), 1)
        );
        // No action: who departed earlier is not counted again.
        assert_eq!(read(None), (keys(&["gone@x.io"]), 2));
    }

    #[test]
    fn the_directory_finds_every_key_and_no_other() {
        for n in [0usize, 1, 3, 4, 5, 1000, 40_000] {
            let mut entries: Vec<Entry> = (0..n as u64)
                .map(|i| Entry {
                    key: key_hash(&format!("person{i}@x.io")),
                    digest: i,
                    person: i + 1,
                    order: i as u32,
                    state: SyncState::Created,
                    this_run: false,
                })
                .collect();
            // Keys at the very ends of the range land in the first and last buckets.
            if n > 2 {
                entries[0].key = 0;
                entries[1].key = u64::MAX;
            }
            entries.sort_unstable_by_key(|e| e.key);
            let directory = Directory::new(&entries);
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(directory.find(&entries, e.key), Some(i), "n = {n}");
            }
            for i in 0..1000 {
                let absent = key_hash(&format!("nobody{i}@x.io"));
                assert_eq!(directory.find(&entries, absent), None, "n = {n}");
            }
        }
    }

    #[test]
    fn the_digest_changes_with_any_mapped_value_and_nothing_else() {
        let contact = |first: Option<&str>, attrs: &[(&str, &str)]| Contact {
            email: "a@x.io".into(),
            first_name: first.map(Into::into),
            last_name: None,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let base = digest(&contact(Some("Ada"), &[("plan", "pro")]));
        assert_eq!(base, digest(&contact(Some("Ada"), &[("plan", "pro")])));
        assert_ne!(base, digest(&contact(Some("Ada "), &[("plan", "pro")])));
        assert_ne!(base, digest(&contact(None, &[("plan", "pro")])));
        assert_ne!(base, digest(&contact(Some(""), &[("plan", "pro")])));
        assert_ne!(base, digest(&contact(Some("Ada"), &[("plan", "free")])));
        assert_ne!(
            base,
            digest(&contact(Some("Ada"), &[("plan", "pro"), ("x", "")]))
        );
        // Fixed for good: this value is stored in sync states.
        assert_eq!(base, 11_879_315_796_234_830_735);
    }
}
