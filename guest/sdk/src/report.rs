//! Turning a vendor's answer to one batch into the contract's [`BatchReport`], accounting for
//! every contact exactly once. Vendors name failed contacts by email; this maps them back.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::{BatchReport, ConnectorError, Contact, ContactIssue, IssueKind};

/// Collects the outcome of a batch. Repeats of an address within the batch are reported as
/// duplicates of its first occurrence up front, since vendors count each address once.
pub struct ReportBuilder<'a> {
    vendor: &'static str,
    size: usize,
    first_index: HashMap<Cow<'a, str>, u32, Hasher>,
    issues: Vec<ContactIssue>,
}

/// A batch's addresses are few and hashed once each: a fast hash serves better than the
/// standard library's flood-resistant one (which also asks the host for random bytes).
type Hasher = foldhash::fast::FixedState;

/// How vendors compare addresses: trimmed, in lower case (borrowed when it already is).
fn key(email: &str) -> Cow<'_, str> {
    let email = email.trim();
    if email.bytes().any(|b| b.is_ascii_uppercase()) || !email.is_ascii() {
        Cow::Owned(email.to_lowercase())
    } else {
        Cow::Borrowed(email)
    }
}

impl<'a> ReportBuilder<'a> {
    /// Starts the report of a batch sent to `vendor` (named in error messages).
    pub fn new(vendor: &'static str, contacts: &'a [Contact]) -> ReportBuilder<'a> {
        let mut first_index = HashMap::with_capacity_and_hasher(contacts.len(), Hasher::default());
        let mut issues = Vec::new();
        for (i, c) in contacts.iter().enumerate() {
            let i = i as u32;
            if *first_index.entry(key(&c.email)).or_insert(i) != i {
                issues.push(ContactIssue {
                    index: i,
                    kind: IssueKind::Rejected,
                    code: "duplicate".into(),
                    message: "Duplicate email address in this batch; sent once".into(),
                });
            }
        }
        ReportBuilder {
            vendor,
            size: contacts.len(),
            first_index,
            issues,
        }
    }

    /// Records that the vendor did not take the contact with this email.
    pub fn issue(
        &mut self,
        email: &str,
        kind: IssueKind,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<(), ConnectorError> {
        let Some(&index) = self.first_index.get(&key(email)) else {
            return Err(ConnectorError::internal(format!(
                "{} reported an outcome for `{email}`, which this batch did not contain",
                self.vendor
            )));
        };
        if self.issues.iter().any(|i| i.index == index) {
            return Err(ConnectorError::internal(format!(
                "{} reported `{email}` twice",
                self.vendor
            )));
        }
        self.issues.push(ContactIssue {
            index,
            kind,
            code: code.into(),
            message: message.into(),
        });
        Ok(())
    }

    /// The report, once the vendor's created and updated totals are known. Fails if they do not
    /// add up with the issues to the batch size, since the run would then miscount.
    pub fn finish(mut self, created: u32, updated: u32) -> Result<BatchReport, ConnectorError> {
        let accounted = created as usize + updated as usize + self.issues.len();
        if accounted != self.size {
            return Err(ConnectorError::internal(format!(
                "{}'s totals do not add up: {created} created + {updated} updated + {} not taken for {} contacts sent",
                self.vendor,
                self.issues.len(),
                self.size
            )));
        }
        self.issues.sort_by_key(|i| i.index);
        Ok(BatchReport {
            created,
            updated,
            issues: self.issues,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(email: &str) -> Contact {
        Contact {
            email: email.into(),
            first_name: None,
            last_name: None,
            attributes: vec![],
        }
    }

    #[test]
    fn repeats_in_other_letter_case_or_with_spaces_are_duplicates_of_the_first() {
        let batch = [
            contact("ada@example.com"),
            contact(" Ada@Example.COM "),
            contact("grace@example.com"),
            contact("ÉLODIE@example.com"),
            contact("élodie@example.com"),
        ];
        let mut report = ReportBuilder::new("Vendor", &batch);
        // The vendor names a contact in its own letter case.
        report
            .issue("GRACE@example.com", IssueKind::Rejected, "1", "bad")
            .unwrap();
        let done = report.finish(2, 0).unwrap();
        let issues: Vec<(u32, &str)> = done
            .issues
            .iter()
            .map(|i| (i.index, i.code.as_str()))
            .collect();
        assert_eq!(issues, [(1, "duplicate"), (2, "1"), (4, "duplicate")]);
    }

    #[test]
    fn an_address_the_batch_did_not_hold_or_named_twice_is_an_error() {
        let batch = [contact("ada@example.com")];
        let mut report = ReportBuilder::new("Vendor", &batch);
        assert!(
            report
                .issue("bob@example.com", IssueKind::Rejected, "1", "x")
                .is_err()
        );
        report
            .issue("ada@example.com", IssueKind::Rejected, "1", "x")
            .unwrap();
        assert!(
            report
                .issue("ADA@example.com", IssueKind::Rejected, "1", "x")
                .is_err()
        );
    }
}
