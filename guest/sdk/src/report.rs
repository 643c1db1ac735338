//! Turning a vendor's answer to one batch into the contract's [`BatchReport`], accounting for
//! every contact exactly once. Vendors name failed contacts by email; this maps them back.

use std::collections::HashMap;

use crate::{BatchReport, ConnectorError, Contact, ContactIssue, IssueKind};

/// Collects the outcome of a batch. Repeats of an address within the batch are reported as
/// duplicates of its first occurrence up front, since vendors count each address once.
pub struct ReportBuilder {
    vendor: &'static str,
    size: usize,
    first_index: HashMap<String, u32>,
    issues: Vec<ContactIssue>,
}

fn key(email: &str) -> String {
    email.trim().to_lowercase()
}

impl ReportBuilder {
    /// Starts the report of a batch sent to `vendor` (named in error messages).
    pub fn new(vendor: &'static str, contacts: &[Contact]) -> ReportBuilder {
        let mut first_index = HashMap::with_capacity(contacts.len());
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

/// Checks a batch against the vendor's size limit (the host never sends more than
/// `max-batch-size`, so this guards against a misconfigured caller). An empty batch needs no
/// request: its report is returned straight away.
pub fn check_batch(
    vendor: &str,
    contacts: &[Contact],
    max: u32,
) -> Result<Option<BatchReport>, ConnectorError> {
    if contacts.is_empty() {
        return Ok(Some(BatchReport {
            created: 0,
            updated: 0,
            issues: vec![],
        }));
    }
    if contacts.len() > max as usize {
        return Err(ConnectorError::invalid_config(format!(
            "batch of {} contacts exceeds {vendor}'s limit of {max}",
            contacts.len()
        )));
    }
    Ok(None)
}
