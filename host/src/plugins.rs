//! The plugin directory: every `.wasm` component in it that speaks the contract becomes a usable
//! connector; every other file is reported with the reason and skipped, and the rest still load.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use crate::broker::Broker;
use crate::contract::{self, ConnectorInfo, ConnectorPre};
use crate::sandbox::{PluginState, Sandbox};

/// A connector loaded from the plugin directory, ready to run.
pub struct Plugin {
    /// What the connector said about itself.
    pub info: ConnectorInfo,
    /// The contract version the component was built against.
    pub contract_version: semver::Version,
    /// The file it came from.
    pub path: PathBuf,
    pub(crate) pre: ConnectorPre<PluginState>,
}

/// A file of the plugin directory that did not load, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// The connectors of a plugin directory.
pub struct Plugins {
    pub loaded: Vec<Arc<Plugin>>,
    pub skipped: Vec<Skipped>,
}

/// Interfaces a connector may import. Rust's std links the wasi:cli and wasi:io basics even when
/// unused; they are harmless because the WASI context grants nothing.
const ALLOWED_IMPORTS: &[&str] = &[
    "wasi:http/outgoing-handler",
    "wasi:http/types",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-",
];

impl Plugins {
    /// Loads every component in `dir`, in file-name order.
    pub async fn load_dir(sandbox: &Sandbox, dir: &Path) -> Result<Plugins> {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the plugin directory {}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        let mut plugins = Plugins {
            loaded: vec![],
            skipped: vec![],
        };
        for path in paths {
            let loaded = if path.extension().is_some_and(|e| e == "wasm") {
                load(sandbox, &path).await
            } else {
                Err(anyhow::anyhow!("not a .wasm file"))
            };
            match loaded {
                Ok(plugin) => {
                    if let Some(other) = plugins.get(&plugin.info.id) {
                        plugins.skipped.push(Skipped {
                            reason: format!(
                                "connector id `{}` is already provided by {}",
                                plugin.info.id,
                                other.path.display()
                            ),
                            path,
                        });
                    } else {
                        tracing::info!(connector = %plugin.info.id, path = %path.display(), "loaded connector");
                        plugins.loaded.push(Arc::new(plugin));
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "skipped plugin: {e:#}");
                    plugins.skipped.push(Skipped {
                        path,
                        reason: format!("{e:#}"),
                    });
                }
            }
        }
        Ok(plugins)
    }

    /// The connector with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Plugin>> {
        self.loaded.iter().find(|p| p.info.id == id)
    }

    /// The connector with this id, or an error listing the ones there are and the files that
    /// did not load.
    pub fn require(&self, id: &str) -> Result<&Arc<Plugin>> {
        self.get(id).with_context(|| {
            let ids: Vec<&str> = self.loaded.iter().map(|p| p.info.id.as_str()).collect();
            let mut message = format!(
                "no connector `{id}` in the plugin directory (loaded: {})",
                if ids.is_empty() {
                    "none".to_string()
                } else {
                    ids.join(", ")
                }
            );
            for s in &self.skipped {
                message.push_str(&format!("; skipped {}: {}", s.path.display(), s.reason));
            }
            message
        })
    }
}

/// Loads one component: compile (or fetch from cache), check the contract, call `describe`.
async fn load(sandbox: &Sandbox, path: &Path) -> Result<Plugin> {
    let component = sandbox
        .compile(path)
        .context("not a WebAssembly component this host can compile")?;
    let contract_version = check_contract(sandbox, &component)?;
    let pre = sandbox.prepare(&component)?;
    let offline = Arc::new(Broker::offline("describe"));
    let info = sandbox
        .call(&pre, offline, async |c, store| {
            c.cdp_connector_export_destination()
                .call_describe(store)
                .await
        })
        .await
        .context("describe failed")?;
    check_info(&info)?;
    Ok(Plugin {
        info,
        contract_version,
        path: path.to_path_buf(),
        pre,
    })
}

/// Checks the component exports a supported version of the contract and imports nothing
/// outside what connectors are allowed. Returns the contract version it was built for.
fn check_contract(sandbox: &Sandbox, component: &Component) -> Result<semver::Version> {
    let ty = component.component_type();
    let engine = sandbox.engine();
    let prefix = format!("{}/{}@", contract::PACKAGE, contract::INTERFACE);
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let Some(version) = exports.iter().find_map(|n| n.strip_prefix(&prefix)) else {
        bail!(
            "does not export {}/{} (it exports: {}); this host supports {}",
            contract::PACKAGE,
            contract::INTERFACE,
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            },
            contract::supported_versions()
        );
    };
    let version = semver::Version::parse(version)
        .with_context(|| format!("unreadable contract version `{version}`"))?;
    if !contract::is_compatible(&version) {
        bail!(
            "built for {}@{version}, which this host does not support; it supports {}",
            contract::PACKAGE,
            contract::supported_versions()
        );
    }
    for (name, item) in ty.imports(engine) {
        let allowed = ALLOWED_IMPORTS.iter().any(|a| name.starts_with(a))
            || name.starts_with(&format!("{}/", contract::PACKAGE));
        if !allowed || !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            bail!(
                "imports `{name}`, which connectors are not allowed (only wasi:http and the basics Rust's std needs)"
            );
        }
    }
    Ok(version)
}

/// Checks what `describe` returned is usable.
fn check_info(info: &ConnectorInfo) -> Result<()> {
    let valid_id = !info.id.is_empty()
        && info
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_id {
        bail!(
            "connector id `{}` must be lowercase letters, digits and dashes",
            info.id
        );
    }
    if info.max_batch_size == 0 {
        bail!("connector `{}` declares a max batch size of 0", info.id);
    }
    if !info.contact_fields.iter().any(|f| f.key == "email") {
        bail!("connector `{}` does not accept an `email` field", info.id);
    }
    if info.hosts.is_empty() {
        bail!("connector `{}` declares no hosts to reach", info.id);
    }
    Ok(())
}
