//! The counters of a run (or of one settled piece of it), kept in one type: the plan (why each
//! profile was or was not sent, and who left) and what the vendor said. A dry run fills only the
//! plan; a real run fills both, so the two can be compared line by line.

use serde::{Deserialize, Serialize};

/// The accounting identities every report satisfies ([`RunCounts::check`]), for each settled
/// piece and so for the whole run, whatever its status:
///
/// - every row of the segment read is counted once: `profiles = sent + not sent`, where
///   `sent = new + changed + returning + resent + resumed` and `not sent = unchanged +
///   still_rejected + still_suppressed + duplicates + invalid + unreadable + repeated_ids +
///   unknown_profiles`;
/// - every contact sent has the vendor's outcome: `created + updated + suppressed + rejected =
///   new + changed + returning + resent + resumed`;
/// - every leaver has one: `leaving = left + left_untouched + left_refused`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RunCounts {
    /// Rows of the segment read from the source: profiles, and rows that could not be used.
    pub profiles: u64,
    /// Sent because the export never sent them before.
    pub new: u64,
    /// Sent because their mapped fields changed since the vendor acknowledged them.
    pub changed: u64,
    /// Sent because they came back after leaving the segment.
    pub returning: u64,
    /// Sent though unchanged, because the run is full.
    pub resent: u64,
    /// Not sent: the vendor already has exactly this.
    pub unchanged: u64,
    /// Not sent: the vendor refused exactly this data before (sent again once it changes).
    pub still_rejected: u64,
    /// Not sent: the vendor keeps them out (unsubscribed, cleaned...) and the data is the same.
    pub still_suppressed: u64,
    /// Not sent: another profile of the export has the same address.
    pub duplicates: u64,
    /// Not sent: no usable email address, or a value longer than the vendor takes.
    pub invalid: u64,
    /// Not sent: rows the source could not read (ragged, not UTF-8, bad JSON, no id...).
    pub unreadable: u64,
    /// Not sent: rows repeating a profile id read before (the first row is used).
    pub repeated_ids: u64,
    /// Not sent: memberships naming a profile the source does not have.
    pub unknown_profiles: u64,
    /// Settled by an earlier attempt of this run, not sent again (their outcome is counted below).
    pub resumed: u64,
    /// Contacts the export sent before that are no longer in the segment.
    pub leaving: u64,

    /// The vendor created them.
    pub created: u64,
    /// The vendor updated them.
    pub updated: u64,
    /// The vendor keeps them out on purpose (unsubscribed, cleaned, suppressed...).
    pub suppressed: u64,
    /// The vendor refused their data.
    pub rejected: u64,
    /// Leavers the leave action was applied to (or that the vendor no longer had, or that the
    /// export leaves alone when it has no leave action).
    pub left: u64,
    /// Leavers the vendor keeps out already, left untouched.
    pub left_untouched: u64,
    /// Leavers the vendor refused the action for.
    pub left_refused: u64,
    /// Batches sent (leave-action calls included).
    pub batches: u64,
    /// Contacts the export sent before that are not leavers though their address is no longer
    /// in the segment: their person still is, under an address that cannot be used now, or
    /// under a new one with an irreversible (or no) leave action. Left as they are at the vendor.
    pub kept: u64,
}

impl RunCounts {
    /// Contacts the plan sends.
    pub fn to_send(&self) -> u64 {
        self.new + self.changed + self.returning + self.resent
    }

    /// Contacts handed to the vendor, this run (resumed ones included).
    pub fn sent(&self) -> u64 {
        self.created + self.updated + self.suppressed + self.rejected
    }

    /// Rows read and not sent, whatever the reason.
    pub fn not_sent(&self) -> u64 {
        self.unchanged
            + self.still_rejected
            + self.still_suppressed
            + self.duplicates
            + self.invalid
            + self.unreadable
            + self.repeated_ids
            + self.unknown_profiles
    }

    /// Rows the plan accounts for; equals `profiles` when the counts add up.
    pub fn planned(&self) -> u64 {
        self.to_send() + self.resumed + self.not_sent()
    }

    /// Checks the accounting identities (see [`RunCounts`]); says which one fails, if any.
    pub fn check(&self) -> Result<(), String> {
        if self.profiles != self.planned() {
            return Err(format!(
                "{} rows read but {} accounted for: {self:?}",
                self.profiles,
                self.planned()
            ));
        }
        if self.sent() != self.to_send() + self.resumed {
            return Err(format!(
                "{} contacts sent but {} outcomes: {self:?}",
                self.to_send() + self.resumed,
                self.sent()
            ));
        }
        let left = self.left + self.left_untouched + self.left_refused;
        if self.leaving != left {
            return Err(format!(
                "{} leavers but {left} outcomes: {self:?}",
                self.leaving
            ));
        }
        Ok(())
    }

    /// Every counter by its name.
    fn fields(&self) -> [(&'static str, u64); 24] {
        let RunCounts {
            profiles,
            new,
            changed,
            returning,
            resent,
            unchanged,
            still_rejected,
            still_suppressed,
            duplicates,
            invalid,
            unreadable,
            repeated_ids,
            unknown_profiles,
            resumed,
            leaving,
            created,
            updated,
            suppressed,
            rejected,
            left,
            left_untouched,
            left_refused,
            batches,
            kept,
        } = self;
        [
            ("profiles", *profiles),
            ("new", *new),
            ("changed", *changed),
            ("returning", *returning),
            ("resent", *resent),
            ("unchanged", *unchanged),
            ("still_rejected", *still_rejected),
            ("still_suppressed", *still_suppressed),
            ("duplicates", *duplicates),
            ("invalid", *invalid),
            ("unreadable", *unreadable),
            ("repeated_ids", *repeated_ids),
            ("unknown_profiles", *unknown_profiles),
            ("resumed", *resumed),
            ("leaving", *leaving),
            ("created", *created),
            ("updated", *updated),
            ("suppressed", *suppressed),
            ("rejected", *rejected),
            ("left", *left),
            ("left_untouched", *left_untouched),
            ("left_refused", *left_refused),
            ("batches", *batches),
            ("kept", *kept),
        ]
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &RunCounts) {
        let RunCounts {
            profiles,
            new,
            changed,
            returning,
            resent,
            unchanged,
            still_rejected,
            still_suppressed,
            duplicates,
            invalid,
            unreadable,
            repeated_ids,
            unknown_profiles,
            resumed,
            leaving,
            created,
            updated,
            suppressed,
            rejected,
            left,
            left_untouched,
            left_refused,
            batches,
            kept,
        } = other;
        self.profiles += profiles;
        self.new += new;
        self.changed += changed;
        self.returning += returning;
        self.resent += resent;
        self.unchanged += unchanged;
        self.still_rejected += still_rejected;
        self.still_suppressed += still_suppressed;
        self.duplicates += duplicates;
        self.invalid += invalid;
        self.unreadable += unreadable;
        self.repeated_ids += repeated_ids;
        self.unknown_profiles += unknown_profiles;
        self.resumed += resumed;
        self.leaving += leaving;
        self.created += created;
        self.updated += updated;
        self.suppressed += suppressed;
        self.rejected += rejected;
        self.left += left;
        self.left_untouched += left_untouched;
        self.left_refused += left_refused;
        self.batches += batches;
        self.kept += kept;
    }

    /// The plan alone (what a dry run would say of this run).
    pub fn plan(&self) -> RunCounts {
        RunCounts {
            created: 0,
            updated: 0,
            suppressed: 0,
            rejected: 0,
            left: 0,
            left_untouched: 0,
            left_refused: 0,
            batches: 0,
            ..self.clone()
        }
    }
}

/// Every counter, and the two sums people read first: `sent` and `not_sent`.
impl Serialize for RunCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let fields = self.fields();
        let mut map = serializer.serialize_map(Some(fields.len() + 2))?;
        for (name, value) in fields {
            map.serialize_entry(name, &value)?;
        }
        map.serialize_entry("sent", &self.sent())?;
        map.serialize_entry("not_sent", &self.not_sent())?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_field_by_field_and_the_plan_drops_the_vendors_part() {
        let mut a = RunCounts {
            profiles: 10,
            new: 4,
            unchanged: 6,
            created: 3,
            rejected: 1,
            ..RunCounts::default()
        };
        let b = RunCounts {
            profiles: 2,
            duplicates: 2,
            leaving: 1,
            left: 1,
            batches: 1,
            ..RunCounts::default()
        };
        a.add(&b);
        assert_eq!((a.profiles, a.planned(), a.sent()), (12, 12, 4));
        assert_eq!(a.plan().sent(), 0);
        assert_eq!(a.plan().leaving, 1);
    }
}
