//! Builds guest components for `wasm32-wasip2` from a build script, into the workspace's own
//! target directory with the release-optimised `guest` profile, as wasmtime's test-programs
//! do. The host's build script uses it for the connectors the CLI bundles, the tests' for
//! every guest they load; cargo builds each guest once for both.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the workspace builds: `CARGO_TARGET_DIR`, or `target/` at its root.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The workspace's root (the parent of the calling package's directory, or its grandparent
/// for a package under `guest/` or `tests/guests/`).
pub fn workspace_root() -> PathBuf {
    let mut dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run from a build script"));
    while !dir.join("wit").is_dir() {
        assert!(
            dir.pop(),
            "no workspace root (a directory with wit/) above the package"
        );
    }
    dir
}

/// Builds `packages` for wasm32-wasip2 and returns the directory holding their `.wasm`
/// files. Reruns of the calling build script follow changes to the guests and the contract.
pub fn build(packages: &[&str]) -> PathBuf {
    let root = workspace_root();
    let target_dir = target_dir();
    for watched in ["guest", "wit", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    ensure_wasm_target();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "guest"])
        .env("CARGO_TARGET_DIR", &target_dir);
    for package in packages {
        cargo.args(["-p", package]);
    }
    // Settings meant for the build script's own compilation must not leak into the guests'.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo.status().expect("run cargo to build the guests");
    assert!(
        status.success(),
        "building the guests {packages:?} failed (see the errors above)"
    );
    target_dir.join("wasm32-wasip2").join("guest")
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

/// Builds the JavaScript connector in `guest/<name>` (a ComponentizeJS project with a
/// `build.mjs`) into `<target>/js-guests/<name>.wasm` and returns the path. Installs its npm
/// packages at the lock file's versions on first use (`npm install --no-save`: `npm ci` refuses
/// a lock made on one platform when packages have optional per-platform dependencies). The component is rebuilt only when its
/// sources, lock file or the contract change: ComponentizeJS output differs from build to
/// build, and each new file costs the tests a fresh compile of a 13 MB component.
pub fn build_js(name: &str) -> PathBuf {
    let root = workspace_root();
    let project = root.join("guest").join(name);
    let out_dir = target_dir().join("js-guests");
    let out = out_dir.join(format!("{name}.wasm"));
    let inputs = [
        project.join("src"),
        project.join("build.mjs"),
        project.join("package-lock.json"),
        root.join("wit"),
    ];
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    let stamp = out_dir.join(format!("{name}.inputs"));
    let digest = inputs
        .iter()
        .map(|p| digest(p))
        .collect::<Vec<_>>()
        .join("\n");
    if out.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == digest) {
        return out;
    }
    std::fs::create_dir_all(&out_dir).expect("create the JavaScript guests' directory");
    if !project.join("node_modules").is_dir() {
        run(
            Command::new("npm")
                .args(["install", "--no-save", "--no-audit", "--no-fund"])
                .current_dir(&project),
            &format!("npm install in {}", project.display()),
        );
    }
    run(
        Command::new("node")
            .arg("build.mjs")
            .arg(&out)
            .current_dir(&project),
        &format!("building the {name} connector (node build.mjs)"),
    );
    std::fs::write(&stamp, digest).expect("write the build stamp");
    out
}

fn run(command: &mut Command, what: &str) {
    let status = command.status().unwrap_or_else(|e| {
        panic!("{what}: cannot start it ({e}); Node.js 18 or newer and npm are needed")
    });
    assert!(status.success(), "{what} failed (see the errors above)");
}

/// A cheap fingerprint of a file or a directory's files: their paths, sizes and contents.
fn digest(path: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut files = vec![];
    collect(path, &mut files);
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in &files {
        file.hash(&mut hasher);
        std::fs::read(file).unwrap_or_default().hash(&mut hasher);
    }
    format!("{}:{:016x}", path.display(), hasher.finish())
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) {
    if path.is_file() {
        files.push(path.to_path_buf());
    } else if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            collect(&entry.path(), files);
        }
    }
}
