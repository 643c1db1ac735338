//! The plugin directory: every `.wasm` component in it that speaks the contract becomes a
//! connector; every other entry is reported with the reason and skipped, and the rest still
//! load. Everything about a plugin is untrusted: only regular files under a size cap are read
//! (checked before reading), compiling and `describe()` each have a deadline, what `describe()`
//! says is validated and cleaned, and two files claiming one id are both set aside.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use crate::broker::{Broker, check_declared_host, check_default_base_url};
use crate::contract::{self, AuthScheme, ConnectorInfo, ConnectorPre};
use crate::sandbox::Sandbox;
use crate::text::{self, MAX_LABEL_CHARS, MAX_MESSAGE_CHARS};

/// A connector loaded from the plugin directory, ready to run.
pub struct Plugin {
    /// What the connector said about itself (validated, its texts cleaned).
    pub info: ConnectorInfo,
    /// The contract version the component was built against.
    pub contract_version: semver::Version,
    /// The file it came from.
    pub path: PathBuf,
    /// SHA-256 of the component's bytes, in hex: what an administrator approves.
    pub digest: String,
    pub(crate) pre: ConnectorPre,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("id", &self.info.id)
            .field("version", &self.info.version)
            .field("path", &self.path)
            .field("digest", &self.digest)
            .finish()
    }
}

/// An entry of the plugin directory that did not load, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

impl Skipped {
    /// The entry's file name and reason, safe to print.
    pub fn describe(&self) -> String {
        format!("{}: {}", display_path(&self.path), self.reason)
    }
}

/// A path as it may be printed: control characters and escapes written out.
pub fn display_path(path: &Path) -> String {
    text::clean(&path.display().to_string(), MAX_MESSAGE_CHARS)
}

/// How many files one message names before it counts the rest, so a directory of many copies
/// still gives a message one can read.
const MAX_LISTED: usize = 4;

/// `items` joined by commas, the first [`MAX_LISTED`] by name and the rest counted.
fn few(items: impl ExactSizeIterator<Item = String>) -> String {
    let more = items.len().saturating_sub(MAX_LISTED);
    let mut listed: Vec<String> = items.take(MAX_LISTED).collect();
    if more > 0 {
        listed.push(format!("{more} more"));
    }
    listed.join(", ")
}

/// The connectors of a plugin directory.
pub struct Plugins {
    pub loaded: Vec<Arc<Plugin>>,
    pub skipped: Vec<Skipped>,
    /// What the directory's entries were when it was read, to notice a change.
    stamps: Vec<Stamp>,
}

/// An entry of the plugin directory as the file system describes it (and the file it leads
/// to, for a symlink): a write, a replacement or a rename changes one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    entry: Option<FileStamp>,
    target: Option<FileStamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    len: u64,
    modified_ns: i128,
    changed_ns: i128,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        FileStamp {
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified_ns: ns(meta.mtime(), meta.mtime_nsec()),
            changed_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The entries of `dir` and their stamps, sorted by path.
fn stamps(dir: &Path) -> Result<Vec<Stamp>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the plugin directory {}", display_path(dir)))?;
    let mut stamps: Vec<Stamp> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .map(|path| Stamp {
            entry: std::fs::symlink_metadata(&path)
                .ok()
                .map(|m| FileStamp::of(&m)),
            target: std::fs::metadata(&path).ok().map(|m| FileStamp::of(&m)),
            path,
        })
        .collect();
    stamps.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(stamps)
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

/// The largest batch a connector may declare; no email vendor takes more in one call.
pub const MAX_BATCH_SIZE: u32 = 10_000;

impl Plugins {
    /// Loads every component in `dir`, concurrently; the result lists them by file name.
    pub async fn load_dir(sandbox: &Arc<Sandbox>, dir: &Path) -> Result<Plugins> {
        // Stamped before reading, so that a file changed during the load is loaded again by
        // the next refresh.
        let stamps = stamps(dir)?;
        let root = std::fs::canonicalize(dir).with_context(|| {
            format!("cannot resolve the plugin directory {}", display_path(dir))
        })?;
        let mut skipped = vec![];
        let mut loading = tokio::task::JoinSet::new();
        for path in stamps.iter().map(|s| s.path.clone()) {
            match admit(&root, &path, sandbox.limits().max_plugin_bytes) {
                Ok(real) => {
                    let sandbox = sandbox.clone();
                    loading.spawn(async move {
                        let loaded = load(&sandbox, &path, &real).await;
                        (path, loaded)
                    });
                }
                Err(reason) => skipped.push(Skipped { path, reason }),
            }
        }
        let mut loaded = vec![];
        while let Some(done) = loading.join_next().await {
            let (path, outcome) = done.context("a plugin loader panicked")?;
            match outcome {
                Ok(plugin) => loaded.push(plugin),
                Err(e) => skipped.push(Skipped {
                    reason: text::clean(&format!("{e:#}"), MAX_MESSAGE_CHARS),
                    path,
                }),
            }
        }
        loaded.sort_by(|a, b| a.path.cmp(&b.path));
        let mut plugins = Plugins {
            loaded: vec![],
            skipped,
            stamps,
        };
        plugins.keep_unique(loaded);
        plugins.skipped.sort_by(|a, b| a.path.cmp(&b.path));
        for s in &plugins.skipped {
            tracing::warn!("skipped plugin {}", s.describe());
        }
        for p in &plugins.loaded {
            tracing::info!(connector = %p.info.id, path = %display_path(&p.path), "loaded connector");
        }
        Ok(plugins)
    }

    /// Whether the directory `dir` still holds exactly the files this was loaded from.
    pub fn is_current(&self, dir: &Path) -> Result<bool> {
        Ok(stamps(dir)? == self.stamps)
    }

    /// Keeps the plugins whose id no other file claims; files sharing an id are all set aside,
    /// since picking one would be a guess.
    fn keep_unique(&mut self, loaded: Vec<Plugin>) {
        let mut by_id: BTreeMap<String, Vec<Plugin>> = BTreeMap::new();
        for plugin in loaded {
            by_id
                .entry(plugin.info.id.clone())
                .or_default()
                .push(plugin);
        }
        for (id, claimants) in by_id {
            if claimants.len() == 1 {
                self.loaded.extend(claimants.into_iter().map(Arc::new));
                continue;
            }
            let files = few(claimants.iter().map(|p| display_path(&p.path)));
            let count = claimants.len();
            for plugin in claimants {
                self.skipped.push(Skipped {
                    reason: format!(
                        "claims connector id `{id}`, as do {count} files in all ({files}); none is used until all but one are removed"
                    ),
                    path: plugin.path,
                });
            }
        }
        self.loaded.sort_by(|a, b| a.path.cmp(&b.path));
    }

    /// The connector with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Plugin>> {
        self.loaded.iter().find(|p| p.info.id == id)
    }

    /// The connector with this id, or an error listing the ones there are and the files that
    /// did not load.
    pub fn require(&self, id: &str) -> Result<&Arc<Plugin>> {
        self.get(id).ok_or_else(|| {
            let ids: Vec<&str> = self.loaded.iter().map(|p| p.info.id.as_str()).collect();
            let mut message = format!(
                "no connector `{}` in the plugin directory (loaded: {})",
                text::clean(id, MAX_LABEL_CHARS),
                if ids.is_empty() {
                    "none".to_string()
                } else {
                    ids.join(", ")
                }
            );
            for s in self.skipped.iter().take(MAX_LISTED) {
                message.push_str(&format!("; skipped {}", s.describe()));
            }
            if self.skipped.len() > MAX_LISTED {
                message.push_str(&format!(
                    "; and {} more files were skipped (`connector-host plugins` lists them all)",
                    self.skipped.len() - MAX_LISTED
                ));
            }
            crate::failure::NotFound(message).into()
        })
    }
}

/// The content digest of the file `path` now (read as the plugin directory reads it).
pub(crate) async fn digest_on_disk(path: &Path, cap: u64) -> Result<String> {
    let file = std::fs::canonicalize(path)
        .with_context(|| format!("{} cannot be read", display_path(path)))?;
    let bytes = tokio::task::spawn_blocking(move || read_capped(&file, cap))
        .await
        .context("the plugin reader panicked")??;
    Ok(digest(&bytes))
}

/// A component file's content digest (SHA-256, hex), as approvals record it.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a directory entry without reading it: a `.wasm` regular file (or a symlink to one
/// inside the plugin directory) no larger than `cap`. Returns the path to read.
fn admit(root: &Path, path: &Path, cap: u64) -> Result<PathBuf, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    let real = if meta.file_type().is_symlink() {
        let real = std::fs::canonicalize(path)
            .map_err(|e| format!("is a symlink that leads nowhere ({e})"))?;
        if !real.starts_with(root) {
            return Err("is a symlink leading outside the plugin directory".into());
        }
        real
    } else {
        path.to_path_buf()
    };
    let meta = std::fs::metadata(&real).map_err(|e| format!("cannot be read: {e}"))?;
    let kind = kind_of(&meta);
    if kind != "a regular file" {
        return Err(format!("is {kind}, not a component file"));
    }
    if path.extension().is_none_or(|e| e != "wasm") {
        return Err("not a .wasm file".into());
    }
    if meta.len() > cap {
        return Err(too_large(meta.len(), cap));
    }
    Ok(real)
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

fn too_large(size: u64, cap: u64) -> String {
    format!(
        "is {:.1} MiB, over the {} MiB limit on plugin files",
        size as f64 / (1 << 20) as f64,
        cap >> 20
    )
}

/// Reads a component file that [`admit`] accepted, checking again on the open file (it may
/// have been swapped meanwhile): never blocking on a FIFO, never reading past the cap.
fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| anyhow!("cannot be read: {e}"))?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("is {}, not a component file", kind_of(&meta));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(cap) as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("cannot be read: {e}"))?;
    if bytes.len() as u64 > cap {
        bail!("{}", too_large(bytes.len() as u64, cap));
    }
    Ok(bytes)
}

/// Loads one component: read, compile (or fetch from cache), check the contract, call
/// `describe`, check what it said.
async fn load(sandbox: &Sandbox, path: &Path, real: &Path) -> Result<Plugin> {
    let cap = sandbox.limits().max_plugin_bytes;
    let file = real.to_path_buf();
    let bytes = tokio::task::spawn_blocking(move || read_capped(&file, cap))
        .await
        .context("the plugin reader panicked")??;
    let digest = digest(&bytes);
    let component = sandbox.compile(bytes).await?;
    let contract_version = check_contract(sandbox, &component)?;
    let pre = sandbox.prepare(&component, &contract_version)?;
    let offline = Arc::new(Broker::offline("describe"));
    let info = sandbox
        .call(
            &pre,
            offline,
            sandbox.limits().describe_timeout,
            async |c, store| c.describe(store).await,
        )
        .await
        .context("describe failed")?;
    Ok(Plugin {
        info: check_info(info)?,
        contract_version,
        path: path.to_path_buf(),
        digest,
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

/// Checks what `describe` returned is usable and safe, and cleans its texts: the id, the
/// field keys and the hosts must be well formed; labels and help are shown to operators.
fn check_info(mut info: ConnectorInfo) -> Result<ConnectorInfo> {
    let valid_id = !info.id.is_empty()
        && info.id.len() <= 64
        && info
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_id {
        bail!(
            "connector id `{}` must be 1 to 64 lowercase letters, digits and dashes",
            text::clean(&info.id, MAX_LABEL_CHARS)
        );
    }
    let id = info.id.clone();
    info.display_name = text::clean(&info.display_name, MAX_LABEL_CHARS);
    info.version = text::clean(&info.version, MAX_LABEL_CHARS);
    if info.hosts.is_empty() {
        bail!("connector `{id}` declares no hosts to reach");
    }
    if info.hosts.len() > 20 {
        bail!(
            "connector `{id}` declares {} hosts; at most 20 are allowed",
            info.hosts.len()
        );
    }
    for host in &info.hosts {
        if let Err(why) = check_declared_host(host) {
            bail!(
                "connector `{id}` declares the host `{}`, which {why}; declared hosts must be DNS names of the vendor's API",
                text::clean(host, MAX_LABEL_CHARS)
            );
        }
    }
    if let Err(why) = check_default_base_url(&info.default_base_url, &info.hosts) {
        bail!(
            "connector `{id}`'s default base URL `{}` {why}; a connector's own base URL must be https on one of its declared hosts (only an administrator may point a connection elsewhere)",
            text::clean(&info.default_base_url, MAX_MESSAGE_CHARS)
        );
    }
    for key in info
        .config_fields
        .iter()
        .map(|f| &f.key)
        .chain(info.contact_fields.iter().map(|f| &f.key))
    {
        let valid = !key.is_empty()
            && key.len() <= 64
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !valid {
            bail!(
                "connector `{id}` declares the field key `{}`; keys are 1 to 64 letters, digits, -, _, . or :",
                text::clean(key, MAX_LABEL_CHARS)
            );
        }
    }
    for field in &mut info.config_fields {
        field.label = text::clean(&field.label, MAX_LABEL_CHARS);
        field.help = text::clean(&field.help, MAX_MESSAGE_CHARS);
    }
    for field in &mut info.contact_fields {
        field.label = text::clean(&field.label, MAX_LABEL_CHARS);
    }
    if info.max_batch_size == 0 || info.max_batch_size > MAX_BATCH_SIZE {
        bail!(
            "connector `{id}` declares a max batch size of {}; it must be between 1 and {MAX_BATCH_SIZE}",
            info.max_batch_size
        );
    }
    if !info.contact_fields.iter().any(|f| f.key == "email") {
        bail!("connector `{id}` does not accept an `email` field");
    }
    if info.leave_actions.len() > 20 {
        bail!(
            "connector `{id}` declares {} leave actions; at most 20 are allowed",
            info.leave_actions.len()
        );
    }
    let mut seen = std::collections::HashSet::new();
    for action in &mut info.leave_actions {
        let valid = !action.id.is_empty()
            && action.id.len() <= 64
            && action
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid || action.id == "none" || !seen.insert(action.id.clone()) {
            bail!(
                "connector `{id}` declares the leave action `{}`; ids are unique, 1 to 64 lowercase letters, digits and dashes, and not `none`",
                text::clean(&action.id, MAX_LABEL_CHARS)
            );
        }
        action.label = text::clean(&action.label, MAX_LABEL_CHARS);
        action.help = text::clean(&action.help, MAX_MESSAGE_CHARS);
        if action.batch_size > info.max_batch_size {
            bail!(
                "connector `{id}`'s leave action `{}` takes {} leavers a call, more than its max batch size of {}",
                action.id,
                action.batch_size,
                info.max_batch_size
            );
        }
    }
    if let AuthScheme::Header(header) = &info.auth
        && let Err(why) = crate::broker::check_credential_header(&header.name, &header.prefix)
    {
        bail!("connector `{id}` declares a credential header that cannot be used: {why}");
    }
    if info.rate_windows.len() > 20 {
        bail!(
            "connector `{id}` declares {} rate windows; at most 20 are allowed",
            info.rate_windows.len()
        );
    }
    for window in &mut info.rate_windows {
        if window.requests == 0 || window.seconds == 0 || window.seconds > 31 * 24 * 3600 {
            bail!(
                "connector `{id}` declares a rate window of {} requests in {} s; both must be positive, and the window at most 31 days",
                window.requests,
                window.seconds
            );
        }
        if let Some(class) = &mut window.applies_to {
            if let Some(method) = &class.method
                && http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).is_err()
            {
                bail!(
                    "connector `{id}` declares a rate window for the method `{}`, which is not an HTTP method",
                    text::clean(method, MAX_LABEL_CHARS)
                );
            }
            if !(class.path_prefix.is_empty() || class.path_prefix.starts_with('/'))
                || class.path_prefix.chars().any(char::is_control)
            {
                bail!(
                    "connector `{id}` declares a rate window for the path `{}`; a path starts with /",
                    text::clean(&class.path_prefix, MAX_LABEL_CHARS)
                );
            }
        }
    }
    if let Some(erasure) = &mut info.erasure {
        *erasure = text::clean(erasure, MAX_MESSAGE_CHARS);
    }
    Ok(info)
}
