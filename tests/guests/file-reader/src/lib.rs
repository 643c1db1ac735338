//! A connector that tries to read the host's files: its component imports wasi:filesystem,
//! which the host refuses at load time, naming the import.

use cdp_connector_sdk::*;

struct FileReader;

impl raw::Guest for FileReader {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            id: "file-reader".into(),
            display_name: "File reader".into(),
            version: "0.1.0".into(),
            default_base_url: "https://api.createsend.com/api/v3.3".into(),
            hosts: vec!["api.createsend.com".into()],
            auth: AuthScheme::Bearer,
            config_fields: vec![],
            contact_fields: vec![ContactField::new("email", "Email", true, 0)],
            custom_fields: false,
            custom_field_max_length: 0,
            leave_actions: vec![],
            max_batch_size: 10,
            max_concurrent_requests: 0,
            rate_windows: vec![],
            erasure: None,
        }
    }

    fn validate(_: ExportConfig) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn export_batch(_: ExportConfig, _: Vec<Contact>) -> Result<BatchReport, ConnectorError> {
        let secrets = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Err(ConnectorError::internal(secrets))
    }

    fn apply_leave_action(
        _: ExportConfig,
        _: String,
        _: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        Err(ConnectorError::internal("no leave actions"))
    }

    fn erase_contacts(
        _config: ExportConfig,
        _contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        Err(ConnectorError::invalid_config("cannot erase"))
    }
}

raw::export!(FileReader);
