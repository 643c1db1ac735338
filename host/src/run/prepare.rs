//! Everything checked before a contact is sent: the connector and its settings, the mapping
//! against the profile source, the segments, the leave action, the base URL the credential may
//! go to (and the broker that enforces it), and the connector's own `validate` with the vendor.

use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::{Connection, CredentialCheck, Export, RunOptions};
use crate::ConnectorHost;
use crate::broker::{AllowList, Broker, BrokerSetup, VendorLimits, check_default_base_url};
use crate::contract::{self, ErrorKind, ExportConfig};
use crate::failure::Unavailable;
use crate::mapping::ResolvedMapping;
use crate::plugins::Plugin;
use crate::source::ProfileSource;
use crate::text::{self, MAX_MESSAGE_CHARS};

/// A run checked and ready: the connector, its config, the resolved mapping, the broker.
pub(crate) struct Prepared {
    pub plugin: Arc<Plugin>,
    pub config: ExportConfig,
    pub mapping: ResolvedMapping,
    pub broker: Arc<Broker>,
}

impl ConnectorHost {
    /// Checks an export as it would be saved: settings, mapping against the profile source's
    /// fields, segments, and the connector's own `validate` against the vendor. Sends no contact.
    pub async fn check_export(
        &self,
        connection: &Connection,
        export: &Export,
        source: &dyn ProfileSource,
    ) -> Result<()> {
        let plugin = self.loaded(&connection.connector)?;
        self.check_export_with(plugin, connection, export, source)
            .await
    }

    /// [`Self::check_export`] with this exact connector (the one an approval covers).
    pub(crate) async fn check_export_with(
        &self,
        plugin: Arc<Plugin>,
        connection: &Connection,
        export: &Export,
        source: &dyn ProfileSource,
    ) -> Result<()> {
        let prepared = self.prepare(plugin, connection, export, source, &RunOptions::default())?;
        self.validate(&prepared, "the export did not validate")
            .await
    }

    /// The connector the plugin directory has loaded under `id`.
    pub(crate) fn loaded(&self, id: &str) -> Result<Arc<Plugin>> {
        Ok(self.plugins().require(id)?.clone())
    }

    /// Everything that can be checked before sending with `plugin`: the export's shape, then
    /// the base URL and the broker.
    pub(crate) fn prepare(
        &self,
        plugin: Arc<Plugin>,
        connection: &Connection,
        export: &Export,
        source: &dyn ProfileSource,
        options: &RunOptions,
    ) -> Result<Prepared> {
        let mapping = check_export_shape(&plugin, export, source)?;
        let (base_url, broker) = self.connect(&plugin, connection, options)?;
        Ok(Prepared {
            config: ExportConfig {
                base_url,
                settings: export.settings.clone(),
                fields: export.mapping.fields(),
                leave_action: export.leave_action.clone(),
            },
            plugin,
            mapping,
            broker: Arc::new(broker),
        })
    }

    /// The vendor URL and the broker for a connection: the data centre filled in, the base URL
    /// checked (the connector's own must be https on its declared hosts; the administrator's
    /// may also be a loopback simulator), the credential handed to the broker.
    pub(crate) fn connect(
        &self,
        plugin: &Plugin,
        connection: &Connection,
        options: &RunOptions,
    ) -> Result<(String, Broker)> {
        let info = &plugin.info;
        let template = connection
            .base_url
            .as_deref()
            .unwrap_or(&info.default_base_url)
            .trim_end_matches('/');
        let base_url = if template.contains("{dc}") {
            let dc = connection
                .data_centre
                .clone()
                .or_else(|| connection.credential.key_suffix());
            let dc =
                dc.filter(|dc| !dc.is_empty() && dc.bytes().all(|b| b.is_ascii_alphanumeric()));
            let Some(dc) = dc else {
                bail!(
                    "connector `{}` needs the account's data centre (e.g. us21): the API key does not end in -<dc>, and the connection names none",
                    info.id
                );
            };
            template.replace("{dc}", &dc.to_ascii_lowercase())
        } else {
            template.to_string()
        };
        let shown = text::clean(&base_url, MAX_MESSAGE_CHARS);
        let uri: http::Uri = base_url
            .parse()
            .with_context(|| format!("the base URL `{shown}` is not a URL"))?;
        let allowed = match &connection.base_url {
            Some(_) => AllowList::for_base_url(&uri, &info.hosts)
                .with_context(|| format!("the connection's base URL `{shown}` cannot be used"))?,
            None => {
                check_default_base_url(&base_url, &info.hosts).map_err(|why| {
                    anyhow::anyhow!("connector `{}`'s base URL `{shown}` {why}", info.id)
                })?;
                AllowList::declared(&info.hosts)
            }
        };
        let setup = BrokerSetup {
            connector: &info.id,
            allowed,
            auth: &info.auth,
            credential: Some(&connection.credential),
            vendor: VendorLimits::declared(info),
            policy: options.broker.clone(),
            base_path: uri.path(),
        };
        let broker = Broker::over_network(setup, &self.network)?
            .with_observer(options.observer.clone())
            .with_account(options.account.clone())
            .with_fence(options.fence.clone())
            .with_tally(options.journal.clone().map(|journal| {
                let started = std::time::Instant::now();
                crate::broker::Tally::start(Arc::new(move |requests, retries| {
                    journal.note_figures(&super::Figures {
                        requests,
                        retries,
                        batches: 0,
                        duration: started.elapsed(),
                        left: None,
                    })
                }))
            }))
            .with_connection_label(format!(
                "{} at {}",
                info.id,
                uri.authority().map(|a| a.as_str()).unwrap_or("")
            ));
        Ok((base_url, broker))
    }

    /// Checks that the vendor accepts a connection's credential, as when the connection is
    /// saved: the connector's `validate` with no settings. Sends no contact. Connectors built
    /// for contract 0.1.0 cannot make this check; the answer then says so.
    pub async fn check_connection(&self, connection: &Connection) -> Result<CredentialCheck> {
        let plugin = self.loaded(&connection.connector)?;
        self.check_connection_with(plugin, connection).await
    }

    /// [`Self::check_connection`] with this exact connector.
    pub(crate) async fn check_connection_with(
        &self,
        plugin: Arc<Plugin>,
        connection: &Connection,
    ) -> Result<CredentialCheck> {
        if plugin.contract_version < semver::Version::new(0, 1, 1) {
            return Ok(CredentialCheck::NotSupported);
        }
        let (base_url, broker) = self.connect(&plugin, connection, &RunOptions::default())?;
        let prepared = Prepared {
            plugin,
            config: ExportConfig {
                base_url,
                settings: vec![],
                fields: vec![],
                leave_action: None,
            },
            mapping: ResolvedMapping::default(),
            broker: Arc::new(broker),
        };
        self.validate(&prepared, "the vendor did not accept the credential")
            .await
            .map(|()| CredentialCheck::Accepted)
    }

    /// Calls the connector's `validate`; a refusal becomes an error starting with `refused`.
    pub(crate) async fn validate(&self, prepared: &Prepared, refused: &str) -> Result<()> {
        let config = &prepared.config;
        let outcome = self
            .sandbox
            .call(
                &prepared.plugin.pre,
                prepared.broker.clone(),
                self.sandbox.limits().call_timeout,
                async |c, store| c.validate(store, config).await,
            )
            .await
            .map_err(|e| {
                anyhow::Error::new(Unavailable(format!(
                    "connector `{}` failed while validating: {e:#}",
                    prepared.plugin.info.id
                )))
            })?;
        outcome.map_err(|e| {
            let refusals = prepared.broker.stats().refusals();
            let host_words = match refusals.is_empty() {
                true => String::new(),
                false => format!("; the host refused {}", refusals.join("; ")),
            };
            let vendor = &prepared.plugin.info.display_name;
            let message = text::clean(&e.message, MAX_MESSAGE_CHARS);
            // Say what failed: the configuration, or the way to the vendor.
            let (lead, unavailable) = match e.kind {
                ErrorKind::Unauthorized | ErrorKind::NotFound | ErrorKind::InvalidConfig => {
                    (refused.to_string(), false)
                }
                ErrorKind::Transport => (format!("could not reach {vendor}"), true),
                ErrorKind::RateLimited => (
                    format!("{vendor} is throttling requests (try again later)"),
                    true,
                ),
                ErrorKind::Vendor => (format!("{vendor} answered with an error"), true),
                ErrorKind::Internal => (
                    format!("connector `{}` failed", prepared.plugin.info.id),
                    true,
                ),
            };
            let text = format!("{lead}: {message}{host_words}; nothing was sent");
            if unavailable {
                anyhow::Error::new(Unavailable(text))
            } else {
                anyhow::anyhow!(text)
            }
        })
    }
}

/// What can be checked without the network or a connection: the settings the connector takes,
/// the mapping against its fields and the source's columns, the segments, and the leave action.
pub(crate) fn check_export_shape(
    plugin: &Plugin,
    export: &Export,
    source: &dyn ProfileSource,
) -> Result<ResolvedMapping> {
    let info = &plugin.info;
    for (key, _) in &export.settings {
        if !info.config_fields.iter().any(|f| f.key == *key) {
            let known: Vec<&str> = info.config_fields.iter().map(|f| f.key.as_str()).collect();
            bail!(
                "connector `{}` has no setting `{key}` (it has: {})",
                info.id,
                known.join(", ")
            );
        }
    }
    for field in info.config_fields.iter().filter(|f| f.required) {
        if !export
            .settings
            .iter()
            .any(|(k, v)| *k == field.key && !v.trim().is_empty())
        {
            bail!(
                "the export lacks the required setting `{}` ({}): {}",
                field.key,
                field.label,
                field.help
            );
        }
    }
    let mapping = export.mapping.resolve(info, &source.columns()?)?;
    if export.segments.is_empty() {
        bail!("the export names no segment; exports send segments only");
    }
    let known = source.segments()?;
    for segment in &export.segments {
        if segment.trim().is_empty() {
            bail!("a segment's name cannot be blank");
        }
        if !known.contains_key(segment) {
            let names: Vec<String> = known
                .keys()
                .map(|s| format!("`{}`", crate::text::clean(s, crate::text::MAX_LABEL_CHARS)))
                .collect();
            let there = if names.is_empty() {
                "the memberships name no segment (their `segment` values are empty or blank)"
                    .to_string()
            } else {
                format!("segments: {}", names.join(", "))
            };
            bail!(
                "segment `{}` does not exist ({there})",
                crate::text::clean(segment, crate::text::MAX_LABEL_CHARS)
            );
        }
    }
    if let Some(action) = &export.leave_action {
        if plugin.contract_version < contract::LEAVE_ACTIONS_SINCE {
            bail!(
                "connector `{}` is built for contract {}, which has no leave actions (they came with {}); choose no leave action, or install a newer build of the connector",
                info.id,
                plugin.contract_version,
                contract::LEAVE_ACTIONS_SINCE
            );
        }
        if !info.leave_actions.iter().any(|a| a.id == *action) {
            let known: Vec<&str> = info.leave_actions.iter().map(|a| a.id.as_str()).collect();
            bail!(
                "connector `{}` has no leave action `{}` (it has: {})",
                info.id,
                text::clean(action, MAX_MESSAGE_CHARS),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    Ok(mapping)
}
