//! Bindings and calls of `cdp:connector@0.2.x` (`wit/v0.2/connector.wit`, as released), so that
//! components built for it keep loading. Values are converted to and from the current model:
//! a 0.2 connector's `max-requests-per-second` becomes a one-second rate window, its leave
//! actions take `max-batch-size` leavers a call, and it cannot erase.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::v0_3 as model;
use crate::sandbox::PluginState;

wasmtime::component::bindgen!({
    path: "../wit/v0.2",
    world: "cdp:connector/connector",
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
    },
});

use exports::cdp::connector::export_destination as v2;

/// A 0.2 component linked and ready to instantiate.
pub(crate) struct Pre(ConnectorPre<PluginState>);

/// A 0.2 instance.
pub(crate) struct Instance(Connector);

impl Pre {
    pub(crate) fn new(pre: InstancePre<PluginState>) -> wasmtime::Result<Pre> {
        Ok(Pre(ConnectorPre::new(pre)?))
    }

    pub(crate) async fn instantiate(
        &self,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Instance> {
        Ok(Instance(self.0.instantiate_async(store).await?))
    }
}

impl Instance {
    pub(crate) async fn describe(
        &self,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<model::ConnectorInfo> {
        let info = self
            .0
            .cdp_connector_export_destination()
            .call_describe(store)
            .await?;
        Ok(model::ConnectorInfo {
            id: info.id,
            display_name: info.display_name,
            version: info.version,
            default_base_url: info.default_base_url,
            hosts: info.hosts,
            auth: match info.auth {
                v2::AuthScheme::BasicSecretAsUser(p) => model::AuthScheme::BasicSecretAsUser(p),
                v2::AuthScheme::BasicSecretAsPassword(u) => {
                    model::AuthScheme::BasicSecretAsPassword(u)
                }
                v2::AuthScheme::Bearer => model::AuthScheme::Bearer,
            },
            config_fields: info
                .config_fields
                .into_iter()
                .map(|f| model::ConfigField {
                    key: f.key,
                    label: f.label,
                    help: f.help,
                    required: f.required,
                })
                .collect(),
            contact_fields: info
                .contact_fields
                .into_iter()
                .map(|f| model::ContactField {
                    key: f.key,
                    label: f.label,
                    required: f.required,
                    max_length: f.max_length,
                })
                .collect(),
            custom_fields: info.custom_fields,
            custom_field_max_length: info.custom_field_max_length,
            leave_actions: info
                .leave_actions
                .into_iter()
                .map(|a| model::LeaveAction {
                    id: a.id,
                    label: a.label,
                    help: a.help,
                    reversible: a.reversible,
                    batch_size: 0,
                })
                .collect(),
            max_batch_size: info.max_batch_size,
            max_concurrent_requests: info.max_concurrent_requests,
            rate_windows: per_second_window(info.max_requests_per_second),
            erasure: None,
        })
    }

    pub(crate) async fn validate(
        &self,
        store: &mut Store<PluginState>,
        config: &model::ExportConfig,
    ) -> wasmtime::Result<Result<(), model::ConnectorError>> {
        let outcome = self
            .0
            .cdp_connector_export_destination()
            .call_validate(store, &config_of(config))
            .await?;
        Ok(outcome.map_err(error_of))
    }

    pub(crate) async fn export_batch(
        &self,
        store: &mut Store<PluginState>,
        config: &model::ExportConfig,
        contacts: &[model::Contact],
    ) -> wasmtime::Result<Result<model::BatchReport, model::ConnectorError>> {
        let outcome = self
            .0
            .cdp_connector_export_destination()
            .call_export_batch(store, &config_of(config), &contacts_of(contacts))
            .await?;
        Ok(outcome.map(report_of).map_err(error_of))
    }

    pub(crate) async fn apply_leave_action(
        &self,
        store: &mut Store<PluginState>,
        config: &model::ExportConfig,
        action: &str,
        contacts: &[model::Contact],
    ) -> wasmtime::Result<Result<model::BatchReport, model::ConnectorError>> {
        let outcome = self
            .0
            .cdp_connector_export_destination()
            .call_apply_leave_action(store, &config_of(config), action, &contacts_of(contacts))
            .await?;
        Ok(outcome.map(report_of).map_err(error_of))
    }
}

/// 0.2's one rate (requests a second, 0: none) as a window.
pub(super) fn per_second_window(per_second: u32) -> Vec<model::RateWindow> {
    (per_second > 0)
        .then_some(model::RateWindow {
            requests: per_second,
            seconds: 1,
            applies_to: None,
        })
        .into_iter()
        .collect()
}

fn config_of(config: &model::ExportConfig) -> v2::ExportConfig {
    v2::ExportConfig {
        base_url: config.base_url.clone(),
        settings: config.settings.clone(),
        fields: config.fields.clone(),
        leave_action: config.leave_action.clone(),
    }
}

fn contacts_of(contacts: &[model::Contact]) -> Vec<v2::Contact> {
    contacts
        .iter()
        .map(|c| v2::Contact {
            email: c.email.clone(),
            first_name: c.first_name.clone(),
            last_name: c.last_name.clone(),
            attributes: c.attributes.clone(),
        })
        .collect()
}

fn report_of(report: v2::BatchReport) -> model::BatchReport {
    model::BatchReport {
        created: report.created,
        updated: report.updated,
        issues: report
            .issues
            .into_iter()
            .map(|i| model::ContactIssue {
                index: i.index,
                kind: match i.kind {
                    v2::IssueKind::Suppressed => model::IssueKind::Suppressed,
                    v2::IssueKind::Rejected => model::IssueKind::Rejected,
                },
                code: i.code,
                message: i.message,
            })
            .collect(),
    }
}

fn error_of(e: v2::ConnectorError) -> model::ConnectorError {
    model::ConnectorError {
        kind: match e.kind {
            v2::ErrorKind::Unauthorized => model::ErrorKind::Unauthorized,
            v2::ErrorKind::NotFound => model::ErrorKind::NotFound,
            v2::ErrorKind::InvalidConfig => model::ErrorKind::InvalidConfig,
            v2::ErrorKind::RateLimited => model::ErrorKind::RateLimited,
            v2::ErrorKind::Vendor => model::ErrorKind::Vendor,
            v2::ErrorKind::Transport => model::ErrorKind::Transport,
            v2::ErrorKind::Internal => model::ErrorKind::Internal,
        },
        message: e.message,
        vendor_code: e.vendor_code,
        retryable: e.retryable,
    }
}
