//! Builds the guest connectors for wasm32-wasip2 and hands their paths to the tests as constants
//! in `artifacts.rs`, as wasmtime's test-programs do. Real connectors live under guest/,
//! hostile test connectors under tests/guests/.

use std::path::PathBuf;

/// (cargo package, artifact file, constant name) of every guest the tests use.
const GUESTS: &[(&str, &str, &str)] = &[
    (
        "campaign-monitor-connector",
        "campaign_monitor_connector.wasm",
        "CAMPAIGN_MONITOR",
    ),
    (
        "mailchimp-connector",
        "mailchimp_connector.wasm",
        "MAILCHIMP",
    ),
    ("brevo-connector", "brevo_connector.wasm", "BREVO"),
    // Test-only guests under tests/guests: misbehaving or unacceptable on purpose.
    ("hostile-connector", "hostile_connector.wasm", "HOSTILE"),
    (
        "file-reader-connector",
        "file_reader_connector.wasm",
        "FILE_READER",
    ),
    ("not-a-connector", "not-a-connector.wasm", "NOT_A_CONNECTOR"),
    (
        "contract-v0-1-connector",
        "contract_v0_1_connector.wasm",
        "CONTRACT_V0_1",
    ),
    (
        "contract-v0-2-connector",
        "contract_v0_2_connector.wasm",
        "CONTRACT_V0_2",
    ),
    (
        "contract-future-connector",
        "contract_future_connector.wasm",
        "CONTRACT_FUTURE",
    ),
];

fn main() {
    let packages: Vec<&str> = GUESTS.iter().map(|(package, _, _)| *package).collect();
    let wasm_dir = guest_builder::build(&packages);
    let target_dir = guest_builder::target_dir();
    let mut consts = String::new();
    for (package, file, name) in GUESTS {
        let path = wasm_dir.join(file);
        assert!(path.is_file(), "guest artifact missing: {}", path.display());
        consts.push_str(&format!(
            "/// `{package}` built for wasm32-wasip2.\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    let mailerlite = guest_builder::build_js("mailerlite");
    consts.push_str(&format!(
        "/// The MailerLite connector (JavaScript, guest/mailerlite) built with ComponentizeJS.\npub const MAILERLITE: &str = {:?};\n",
        mailerlite.display().to_string()
    ));
    consts.push_str(&format!(
        "/// Where tests and the demo cache compiled connectors.\npub const COMPILE_CACHE: &str = {:?};\n/// The workspace's target directory.\npub const TARGET_DIR: &str = {:?};\n",
        target_dir.join("connector-cache").display().to_string(),
        target_dir.display().to_string()
    ));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("artifacts.rs");
    std::fs::write(&out, consts).unwrap();
}
