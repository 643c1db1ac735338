//! Bindings and calls of `cdp:connector@0.1.x` (`wit/v0.1/connector.wit`, as released), so that
//! components built for it keep loading. Values are converted to and from the current model:
//! a 0.1 connector declares no leave actions and no custom fields, and sees neither the mapped
//! fields nor the leave action of an export.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::v0_3 as model;
use crate::sandbox::PluginState;

wasmtime::component::bindgen!({
    path: "../wit/v0.1",
    world: "cdp:connector/connector",
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
    },
});

use exports::cdp::connector::export_destination as v1;

/// A 0.1 component linked and ready to instantiate.
pub(crate) struct Pre(ConnectorPre<PluginState>);

/// A 0.1 instance.
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
                v1::AuthScheme::BasicSecretAsUser(p) => model::AuthScheme::BasicSecretAsUser(p),
                v1::AuthScheme::BasicSecretAsPassword(u) => {
                    model::AuthScheme::BasicSecretAsPassword(u)
                }
                v1::AuthScheme::Bearer => model::AuthScheme::Bearer,
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
                    // 0.1 connectors declare no limits: the host applies only its own.
                    max_length: 0,
                })
                .collect(),
            custom_fields: false,
            custom_field_max_length: 0,
            leave_actions: vec![],
            max_batch_size: info.max_batch_size,
            max_concurrent_requests: info.max_concurrent_requests,
            rate_windows: super::v0_2::per_second_window(info.max_requests_per_second),
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
        let contacts: Vec<v1::Contact> = contacts
            .iter()
            .map(|c| v1::Contact {
                email: c.email.clone(),
                first_name: c.first_name.clone(),
                last_name: c.last_name.clone(),
                attributes: c.attributes.clone(),
            })
            .collect();
        let outcome = self
            .0
            .cdp_connector_export_destination()
            .call_export_batch(store, &config_of(config), &contacts)
            .await?;
        Ok(outcome.map(report_of).map_err(error_of))
    }
}

fn config_of(config: &model::ExportConfig) -> v1::ExportConfig {
    v1::ExportConfig {
        base_url: config.base_url.clone(),
        settings: config.settings.clone(),
    }
}

fn report_of(report: v1::BatchReport) -> model::BatchReport {
    model::BatchReport {
        created: report.created,
        updated: report.updated,
        issues: report
            .issues
            .into_iter()
            .map(|i| model::ContactIssue {
                index: i.index,
                kind: match i.kind {
                    v1::IssueKind::Suppressed => model::IssueKind::Suppressed,
                    v1::IssueKind::Rejected => model::IssueKind::Rejected,
                },
                code: i.code,
                message: i.message,
            })
            .collect(),
    }
}

fn error_of(e: v1::ConnectorError) -> model::ConnectorError {
    model::ConnectorError {
        kind: match e.kind {
            v1::ErrorKind::Unauthorized => model::ErrorKind::Unauthorized,
            v1::ErrorKind::NotFound => model::ErrorKind::NotFound,
            v1::ErrorKind::InvalidConfig => model::ErrorKind::InvalidConfig,
            v1::ErrorKind::RateLimited => model::ErrorKind::RateLimited,
            v1::ErrorKind::Vendor => model::ErrorKind::Vendor,
            v1::ErrorKind::Transport => model::ErrorKind::Transport,
            v1::ErrorKind::Internal => model::ErrorKind::Internal,
        },
        message: e.message,
        vendor_code: e.vendor_code,
        retryable: e.retryable,
    }
}
