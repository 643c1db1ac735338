//! Bindings and calls of `cdp:connector@0.3.x` (`wit/connector.wit`), the current contract. Its
//! types are the host's own model of the contract (see the parent module).

use wasmtime::Store;
use wasmtime::component::InstancePre;

use crate::sandbox::PluginState;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "cdp:connector/connector",
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
    },
});

pub use exports::cdp::connector::export_destination::{
    AuthScheme, BatchReport, ConfigField, ConnectorError, ConnectorInfo, Contact, ContactField,
    ContactIssue, ErrorKind, ExportConfig, HeaderAuth, IssueKind, LeaveAction, RateWindow,
    RequestClass,
};

/// A 0.3 component linked and ready to instantiate.
pub(crate) struct Pre(ConnectorPre<PluginState>);

/// A 0.3 instance.
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
    ) -> wasmtime::Result<ConnectorInfo> {
        self.0
            .cdp_connector_export_destination()
            .call_describe(store)
            .await
    }

    pub(crate) async fn validate(
        &self,
        store: &mut Store<PluginState>,
        config: &ExportConfig,
    ) -> wasmtime::Result<Result<(), ConnectorError>> {
        self.0
            .cdp_connector_export_destination()
            .call_validate(store, config)
            .await
    }

    pub(crate) async fn export_batch(
        &self,
        store: &mut Store<PluginState>,
        config: &ExportConfig,
        contacts: &[Contact],
    ) -> wasmtime::Result<Result<BatchReport, ConnectorError>> {
        self.0
            .cdp_connector_export_destination()
            .call_export_batch(store, config, contacts)
            .await
    }

    pub(crate) async fn apply_leave_action(
        &self,
        store: &mut Store<PluginState>,
        config: &ExportConfig,
        action: &str,
        contacts: &[Contact],
    ) -> wasmtime::Result<Result<BatchReport, ConnectorError>> {
        self.0
            .cdp_connector_export_destination()
            .call_apply_leave_action(store, config, action, contacts)
            .await
    }

    pub(crate) async fn erase_contacts(
        &self,
        store: &mut Store<PluginState>,
        config: &ExportConfig,
        contacts: &[Contact],
    ) -> wasmtime::Result<Result<BatchReport, ConnectorError>> {
        self.0
            .cdp_connector_export_destination()
            .call_erase_contacts(store, config, contacts)
            .await
    }
}
