//! Builds the guest connectors for wasm32-wasip2 (release-optimised `guest` profile) and hands
//! their paths to the tests as constants in `artifacts.rs`, as wasmtime's test-programs do.
//! Real connectors live under guest/, hostile test connectors under tests/guests/.

use std::path::{Path, PathBuf};
use std::process::Command;

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
        "contract-future-connector",
        "contract_future_connector.wasm",
        "CONTRACT_FUTURE",
    ),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for watched in ["guest", "wit", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    ensure_wasm_target();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "guest"])
        .env("CARGO_TARGET_DIR", &target_dir);
    for (package, _, _) in GUESTS {
        cargo.args(["-p", package]);
    }
    // Settings meant for this build script's own compilation must not leak into the guests'.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo
        .status()
        .expect("run cargo to build the guest connectors");
    assert!(
        status.success(),
        "building the guest connectors failed (see the errors above)"
    );

    let wasm_dir = target_dir.join("wasm32-wasip2").join("guest");
    let mut consts = String::new();
    for (package, file, name) in GUESTS {
        let path = wasm_dir.join(file);
        assert!(path.is_file(), "guest artifact missing: {}", path.display());
        consts.push_str(&format!(
            "/// `{package}` built for wasm32-wasip2.\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    consts.push_str(&format!(
        "/// Where tests and the demo cache compiled connectors.\npub const COMPILE_CACHE: &str = {:?};\n/// The workspace's target directory.\npub const TARGET_DIR: &str = {:?};\n",
        target_dir.join("connector-cache").display().to_string(),
        target_dir.display().to_string()
    ));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("artifacts.rs");
    std::fs::write(&out, consts).unwrap();
}

/// Installs the wasm32-wasip2 standard library when the toolchain lacks it (rust-toolchain.toml
/// lists it, but rustup does not always install listed targets on its own).
fn ensure_wasm_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.is_some_and(|d| d.is_dir() && has_files(&d)) {
        return;
    }
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed"
    );
}

fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}
