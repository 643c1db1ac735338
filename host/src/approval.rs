//! An administrator's approval of a connector: the exact component (its content digest) and
//! the hosts it may send the credential to. A connector that was never approved, or whose
//! content or hosts changed since, cannot be used by connections or exports until an
//! administrator approves it (again).

use anyhow::Result;
use serde::Serialize;

use crate::failure::Missing;
use crate::plugins::Plugin;

/// What an administrator approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub connector: String,
    /// SHA-256 of the component file, hex.
    pub digest: String,
    /// The hosts it declared, sorted.
    pub hosts: Vec<String>,
    pub default_base_url: String,
    pub version: String,
    pub approved_by: String,
    pub approved_at: String,
}

impl Approval {
    /// An approval of `plugin` as loaded now, by `by`.
    pub fn of(plugin: &Plugin, by: &str, at: String) -> Approval {
        Approval {
            connector: plugin.info.id.clone(),
            digest: plugin.digest.clone(),
            hosts: sorted(&plugin.info.hosts),
            default_base_url: plugin.info.default_base_url.clone(),
            version: plugin.info.version.clone(),
            approved_by: by.to_string(),
            approved_at: at,
        }
    }
}

/// Where a loaded connector stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalStatus {
    Approved,
    NotApproved,
    /// Approved once, but what was approved is no longer what is loaded (each entry says what
    /// changed).
    Changed(Vec<String>),
}

impl ApprovalStatus {
    /// Compares a loaded connector with its approval, if it has one.
    pub fn of(plugin: &Plugin, approval: Option<&Approval>) -> ApprovalStatus {
        let Some(approval) = approval else {
            return ApprovalStatus::NotApproved;
        };
        let mut changes = vec![];
        if approval.digest != plugin.digest {
            changes.push(format!(
                "its content changed (sha256:{} was approved, the file is now sha256:{})",
                short(&approval.digest),
                short(&plugin.digest)
            ));
        }
        let hosts = sorted(&plugin.info.hosts);
        if approval.hosts != hosts {
            changes.push(format!(
                "its hosts changed (approved: {}; now: {})",
                approval.hosts.join(", "),
                hosts.join(", ")
            ));
        }
        if changes.is_empty() {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Changed(changes)
        }
    }
}

/// Refuses a connector that is not approved as loaded, saying what an administrator must do.
pub fn require(plugin: &Plugin, approval: Option<&Approval>) -> Result<()> {
    let id = &plugin.info.id;
    match ApprovalStatus::of(plugin, approval) {
        ApprovalStatus::Approved => Ok(()),
        ApprovalStatus::NotApproved => Err(Missing::Approval {
            connector: id.clone(),
            changed: None,
        }
        .into()),
        ApprovalStatus::Changed(changes) => {
            let approval = approval.expect("changed implies approved once");
            Err(Missing::Approval {
                connector: id.clone(),
                changed: Some(format!(
                    "changed since {} approved it at {}: {}",
                    approval.approved_by,
                    approval.approved_at,
                    changes.join("; ")
                )),
            }
            .into())
        }
    }
}

fn sorted(hosts: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The first 12 hex digits of a digest, enough to tell files apart in a message.
pub fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}
