//! Field mapping: which profile column feeds which contact field. The host maps, so every
//! connector receives the same typed contacts and the mapping rules live in one place.

use anyhow::{Result, bail};

use crate::contract::{ConnectorInfo, Contact};
use crate::source::Profile;

/// Contact field key → profile column, as the export configures it: typed from where it is
/// given (a flag, a JSON object, a form) to the run. Stored and shown as `field=column` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct FieldMapping(pub Vec<(String, String)>);

impl FieldMapping {
    /// Parses `field=column` pairs, e.g. `["email=email_address", "first-name=given_name"]`.
    pub fn parse<S: AsRef<str>>(pairs: &[S]) -> Result<FieldMapping> {
        let mut split = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let pair = pair.as_ref();
            let Some((field, column)) = pair.split_once('=') else {
                bail!("mapping `{pair}` must look like FIELD=COLUMN, e.g. email=email_address");
            };
            split.push((field, column));
        }
        FieldMapping::from_columns(split)
    }

    /// The mapping of each contact field to its column, checked: no blank name, no field
    /// mapped twice.
    pub fn from_columns<F: AsRef<str>, C: AsRef<str>>(
        pairs: impl IntoIterator<Item = (F, C)>,
    ) -> Result<FieldMapping> {
        let mut mapping: Vec<(String, String)> = Vec::new();
        for (field, column) in pairs {
            let (field, column) = (field.as_ref().trim(), column.as_ref().trim());
            if field.is_empty() || column.is_empty() {
                bail!(
                    "mapping `{field}={column}` must name a contact field and a profile column, e.g. email=email_address"
                );
            }
            if mapping.iter().any(|(f, _)| f == field) {
                bail!("contact field `{field}` is mapped twice");
            }
            mapping.push((field.to_string(), column.to_string()));
        }
        Ok(FieldMapping(mapping))
    }

    /// `field=column` pairs, in order.
    pub fn pairs(&self) -> Vec<String> {
        self.0.iter().map(|(f, c)| format!("{f}={c}")).collect()
    }

    /// The contact fields mapped, `email` first, as the contract's `export-config.fields` says.
    pub fn fields(&self) -> Vec<String> {
        let mut fields: Vec<String> = self.0.iter().map(|(f, _)| f.clone()).collect();
        fields.sort_by_key(|f| f != "email");
        fields
    }

    /// Checks the mapping against the connector's fields and the source's columns and resolves
    /// column positions once for the whole run. A field the connector does not declare is one
    /// of the vendor list's own fields, if the connector takes those (it checks them against
    /// the list when the export is validated).
    pub(crate) fn resolve(
        &self,
        info: &ConnectorInfo,
        columns: &[String],
    ) -> Result<ResolvedMapping> {
        for required in info.contact_fields.iter().filter(|f| f.required) {
            if !self.0.iter().any(|(f, _)| *f == required.key) {
                bail!(
                    "the export does not map the required `{}` field; map it to a profile column, e.g. {}=<column>",
                    required.key,
                    required.key
                );
            }
        }
        let mut resolved = ResolvedMapping {
            vendor: info.display_name.clone(),
            ..ResolvedMapping::default()
        };
        for (field, column) in &self.0 {
            let declared = info.contact_fields.iter().find(|f| f.key == *field);
            let max_length = match declared {
                Some(f) => f.max_length,
                None => info.custom_field_max_length,
            };
            // The host's own limit on addresses holds whatever the connector declares.
            let max_length = match (field.as_str(), max_length) {
                ("email", 0) => crate::email::MAX_ADDRESS_LEN as u32,
                ("email", n) => n.min(crate::email::MAX_ADDRESS_LEN as u32),
                (_, n) => n,
            };
            if max_length > 0 {
                resolved.limits.push((field.clone(), max_length as usize));
            }
            let declared = declared.is_some();
            if !declared && !info.custom_fields {
                let offered: Vec<&str> =
                    info.contact_fields.iter().map(|f| f.key.as_str()).collect();
                bail!(
                    "connector `{}` has no contact field `{field}` (it offers: {})",
                    info.id,
                    offered.join(", ")
                );
            }
            let valid = field.len() <= 64
                && field
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:[] ".contains(&b));
            if !valid {
                bail!(
                    "`{field}` is not a usable field name: up to 64 letters, digits, spaces and - _ . : [ ]"
                );
            }
            let Some(index) = columns.iter().position(|c| c == column) else {
                bail!(
                    "the export maps `{field}` to profile field `{column}`, which the profiles do not have (they have: {})",
                    columns.join(", ")
                );
            };
            match field.as_str() {
                "email" => resolved.email = index,
                "first-name" => resolved.first_name = Some(index),
                "last-name" => resolved.last_name = Some(index),
                _ => resolved.attributes.push((field.clone(), index)),
            }
        }
        Ok(resolved)
    }
}

/// A mapping with column positions, ready to apply to each profile.
#[derive(Debug, Default)]
pub(crate) struct ResolvedMapping {
    email: usize,
    first_name: Option<usize>,
    last_name: Option<usize>,
    attributes: Vec<(String, usize)>,
    /// The longest value each mapped field may have, in characters, where there is a limit.
    limits: Vec<(String, usize)>,
    /// The vendor's name, for messages.
    vendor: String,
}

impl ResolvedMapping {
    /// The contact for a profile; its email may be empty (the run rejects those).
    pub(crate) fn contact(&self, profile: &Profile) -> Contact {
        let value = |i: usize| {
            profile
                .values
                .get(i)
                .cloned()
                .flatten()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Contact {
            email: value(self.email).unwrap_or_default(),
            first_name: self.first_name.and_then(value),
            last_name: self.last_name.and_then(value),
            attributes: self
                .attributes
                .iter()
                .filter_map(|(k, i)| value(*i).map(|v| (k.clone(), v)))
                .collect(),
        }
    }

    /// Why `contact` cannot be sent as it is, if a value is longer than its field takes.
    pub(crate) fn over_limit(&self, contact: &Contact) -> Option<String> {
        self.limits.iter().find_map(|(field, max)| {
            let value = match field.as_str() {
                "email" => Some(contact.email.as_str()),
                "first-name" => contact.first_name.as_deref(),
                "last-name" => contact.last_name.as_deref(),
                key => contact
                    .attributes
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str()),
            }?;
            // Only long values are counted in full.
            let length = if value.len() <= *max {
                return None;
            } else {
                value.chars().count()
            };
            (length > *max).then(|| {
                format!(
                    "{field} is {length} characters long; {} takes at most {max}",
                    self.vendor
                )
            })
        })
    }
}

impl TryFrom<Vec<String>> for FieldMapping {
    type Error = anyhow::Error;
    fn try_from(pairs: Vec<String>) -> Result<FieldMapping> {
        FieldMapping::parse(&pairs)
    }
}

impl From<FieldMapping> for Vec<String> {
    fn from(mapping: FieldMapping) -> Vec<String> {
        mapping.pairs()
    }
}

impl std::fmt::Display for FieldMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.pairs().join(", "))
    }
}
