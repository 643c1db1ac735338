//! The sandbox connectors run in: one wasmtime engine, a fresh store per call with memory caps
//! and a wall-clock deadline, a WASI context that grants nothing, and `wasi:http` wired to the
//! run's [`Broker`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::broker::{Broker, BrokerHooks};
use crate::contract::{BatchReport, Connector, ConnectorError, ConnectorInfo, ConnectorPre};

/// Resource limits applied to every connector call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest linear memory a connector instance may grow to.
    pub memory_bytes: usize,
    /// Largest table (e.g. function table) an instance may grow to, in elements.
    pub table_elements: usize,
    /// Wall-clock time one call (`describe`, `validate`, one `export-batch`) may take, including
    /// the time its HTTP requests spend waiting on the vendor.
    pub call_timeout: Duration,
    /// CPU time one call may spend running connector code (waiting on the network is not
    /// counted), measured in 10 ms epoch ticks. `None` turns the budget and epoch interruption
    /// off: only for trusted connectors, since a busy loop then holds its thread and the
    /// wall-clock deadline cannot stop it.
    pub cpu_time: Option<Duration>,
    /// Largest value a call may hand back (strings and lists of its result, in bytes).
    pub max_return_bytes: usize,
    /// Host resources (requests, headers, streams, timers) one call may hold at once, so a
    /// connector cannot make the host allocate without bound.
    pub max_resources: usize,
    /// Wall-clock time `describe` may take when a plugin loads.
    pub describe_timeout: Duration,
    /// Time compiling one component may take when a plugin loads.
    pub compile_timeout: Duration,
    /// Largest component file loaded from the plugin directory (checked before reading).
    pub max_plugin_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 128 << 20,
            table_elements: 100_000,
            call_timeout: Duration::from_secs(300),
            cpu_time: Some(Duration::from_secs(30)),
            max_return_bytes: 4 << 20,
            max_resources: 1_000,
            describe_timeout: Duration::from_secs(5),
            compile_timeout: Duration::from_secs(10),
            max_plugin_bytes: 32 << 20,
        }
    }
}

/// How often the engine's epoch advances; a running connector yields to the host at each tick,
/// so a busy loop cannot hold a thread past its deadline.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine, the linker with the imports connectors get, and the compiled-component cache.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<PluginState>,
    limits: Limits,
    cache_dir: Option<PathBuf>,
}

impl Sandbox {
    /// A sandbox applying `limits`, caching compiled components in `cache_dir` when given.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> Result<Sandbox> {
        let mut config = Config::new();
        config.epoch_interruption(limits.cpu_time.is_some());
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
        let engine = Engine::new(&config)?;
        if limits.cpu_time.is_some() {
            start_epoch_ticker(&engine);
        }

        let mut linker = Linker::new(&engine);
        // Rust's std pulls in wasi:cli, wasi:io, wasi:clocks...; they are linked but the context
        // grants nothing (no preopens, no environment, no inherited stdio, no sockets).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Ok(Sandbox {
            engine,
            linker,
            limits,
            cache_dir,
        })
    }

    /// The limits applied to each call.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a component (or loads it from the cache when these exact bytes were compiled
    /// before by a compatible engine), giving up after the compile deadline. Compilation cannot
    /// be interrupted, so a component past the deadline finishes on its own thread and is
    /// thrown away.
    pub(crate) async fn compile(&self, wasm: Vec<u8>) -> Result<Component> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (engine, cache_dir) = (self.engine.clone(), self.cache_dir.clone());
        std::thread::Builder::new()
            .name("compile-component".into())
            .spawn(move || {
                let _ = tx.send(compile_cached(&engine, cache_dir.as_deref(), &wasm));
            })
            .context("cannot start a compiler thread")?;
        match tokio::time::timeout(self.limits.compile_timeout, rx).await {
            Ok(Ok(compiled)) => compiled,
            Ok(Err(_)) => bail!("the compiler thread ended without an answer"),
            Err(_) => bail!(
                "did not compile within the {} s deadline (an unusually large or complex component)",
                self.limits.compile_timeout.as_secs_f64()
            ),
        }
    }

    /// Links a compiled component against the sandbox's imports, ready to instantiate cheaply,
    /// with the bindings of the contract `version` it was built for.
    pub(crate) fn prepare(
        &self,
        component: &Component,
        version: &semver::Version,
    ) -> Result<ConnectorPre> {
        let pre = self.linker.instantiate_pre(component)?;
        ConnectorPre::new(version, pre)
    }

    /// Runs `call` against a fresh instance whose requests go through `broker`, under the
    /// sandbox's limits and `deadline` (wall-clock; [`Limits::call_timeout`] for calls of a
    /// run). Any trap, limit or deadline fails only this call.
    pub(crate) async fn call<R: ReturnSize>(
        &self,
        pre: &ConnectorPre,
        broker: Arc<Broker>,
        deadline: Duration,
        call: impl AsyncFnOnce(&Connector, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        // What the connector prints goes to a small buffer, quoted when it crashes (a panic
        // message), and never to the host's own output.
        let stderr = MemoryOutputPipe::new(STDERR_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(self.limits.max_resources);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(FIELD_SIZE_LIMIT);
        let state = PluginState {
            wasi: WasiCtx::builder().stderr(stderr.clone()).build(),
            cpu_ticks: 0,
            http,
            table,
            hooks: BrokerHooks(broker),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .table_elements(self.limits.table_elements)
                .trap_on_grow_failure(true)
                .build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Each tick that finds the connector running counts against its CPU budget, then lets
        // other tasks run; ticks spent waiting on the host (network) are not seen here.
        if let Some(cpu_time) = self.limits.cpu_time {
            let cpu_budget = (cpu_time.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(move |mut ctx| {
                let state = ctx.data_mut();
                state.cpu_ticks += 1;
                if state.cpu_ticks > cpu_budget {
                    return Err(wasmtime::Error::msg(CPU_BUDGET_SPENT));
                }
                Ok(UpdateDeadline::Yield(1))
            });
        }
        let run = async {
            let instance = pre.instantiate(&mut store).await?;
            call(&instance, &mut store).await
        };
        let value = match tokio::time::timeout(deadline, run).await {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => {
                let mut text = describe_trap(e, &self.limits);
                let printed = String::from_utf8_lossy(&stderr.contents())
                    .trim()
                    .to_string();
                if !printed.is_empty() {
                    let tail: String = printed
                        .chars()
                        .rev()
                        .take(STDERR_QUOTED)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    let tail = crate::text::clean(&tail, STDERR_QUOTED);
                    text.push_str(&format!("; it printed: {tail}"));
                }
                return Err(anyhow!(text));
            }
            Err(_) => {
                return Err(anyhow!(
                    "the connector did not finish within the {} s call deadline",
                    deadline.as_secs_f64()
                ));
            }
        };
        let size = value.return_size();
        if size > self.limits.max_return_bytes {
            return Err(anyhow!(
                "the connector returned {size} bytes, over the {}-byte limit on what a call may return",
                self.limits.max_return_bytes
            ));
        }
        Ok(value)
    }
}

/// Bytes of guest-controlled data in a call's result (strings and list entries), for the cap
/// on what a call may return.
pub(crate) trait ReturnSize {
    fn return_size(&self) -> usize;
}

impl ReturnSize for ConnectorInfo {
    fn return_size(&self) -> usize {
        let strings = |v: &[String]| v.iter().map(|s| s.len() + 8).sum::<usize>();
        self.id.len()
            + self.display_name.len()
            + self.version.len()
            + self.default_base_url.len()
            + strings(&self.hosts)
            + self
                .leave_actions
                .iter()
                .map(|a| a.id.len() + a.label.len() + a.help.len() + 8)
                .sum::<usize>()
            + self
                .config_fields
                .iter()
                .map(|f| f.key.len() + f.label.len() + f.help.len() + 8)
                .sum::<usize>()
            + self
                .contact_fields
                .iter()
                .map(|f| f.key.len() + f.label.len() + 8)
                .sum::<usize>()
    }
}

impl ReturnSize for BatchReport {
    fn return_size(&self) -> usize {
        self.issues
            .iter()
            .map(|i| i.code.len() + i.message.len() + 16)
            .sum()
    }
}

impl ReturnSize for ConnectorError {
    fn return_size(&self) -> usize {
        self.message.len() + self.vendor_code.as_ref().map_or(0, String::len)
    }
}

impl ReturnSize for () {
    fn return_size(&self) -> usize {
        0
    }
}

impl<T: ReturnSize, E: ReturnSize> ReturnSize for Result<T, E> {
    fn return_size(&self) -> usize {
        match self {
            Ok(v) => v.return_size(),
            Err(e) => e.return_size(),
        }
    }
}

/// How much of a connector's stderr is kept, and how much of it is quoted.
const STDERR_BYTES: usize = 16 << 10;
const STDERR_QUOTED: usize = 400;
/// Largest set of headers a connector may build (roughly bytes in memory; requests need far
/// less than 8 KiB on the wire).
const FIELD_SIZE_LIMIT: usize = 32 << 10;
const CPU_BUDGET_SPENT: &str = "CPU budget spent";

/// Words a wasmtime error the way an operator needs it: what the connector did wrong, without
/// the wasm backtrace.
fn describe_trap(error: wasmtime::Error, limits: &Limits) -> String {
    let text = format!("{error:#}");
    if text.contains(CPU_BUDGET_SPENT) {
        return format!(
            "the connector used more than its CPU budget of {:?} for one call (endless loop?)",
            limits.cpu_time.unwrap_or_default()
        );
    }
    if text.contains("resource table has no free keys") {
        return format!(
            "the connector held more than {} host resources (requests, headers, streams) at once",
            limits.max_resources
        );
    }
    if text.contains("forcing trap when growing memory") {
        return format!(
            "the connector exceeded its memory limit of {} MiB",
            limits.memory_bytes >> 20
        );
    }
    let Some(trap) = error.downcast_ref::<wasmtime::Trap>() else {
        return text;
    };
    let what = match trap {
        wasmtime::Trap::UnreachableCodeReached => "the connector crashed (panic or abort)",
        wasmtime::Trap::StackOverflow => "the connector overflowed its stack (stack overflow)",
        // A Rust guest keeps its own stack in linear memory; running off its end is the usual
        // cause of an out-of-bounds access.
        wasmtime::Trap::MemoryOutOfBounds => {
            "the connector accessed memory out of bounds (stack overflow or memory corruption)"
        }
        _ => "the connector trapped",
    };
    format!("{what}: {trap}")
}

/// Compiles `wasm`, through the cache when there is one: compiled components are stored
/// under a digest of their bytes and of the engine's settings.
fn compile_cached(engine: &Engine, cache_dir: Option<&Path>, wasm: &[u8]) -> Result<Component> {
    let Some(cache_dir) = cache_dir else {
        return Ok(Component::new(engine, wasm)?);
    };
    let cached = cache_dir.join(format!("{}.cwasm", cache_key(engine, wasm)));
    if cached.is_file() {
        // SAFETY: files in the cache directory are written only below, under a name that binds
        // them to these exact bytes and this engine build.
        if let Ok(component) = unsafe { Component::deserialize_file(engine, &cached) } {
            return Ok(component);
        }
    }
    let compiled = engine.precompile_component(wasm)?;
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("cannot create the cache directory {}", cache_dir.display()))?;
    // Write then rename, so a concurrent start never reads half a file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cached.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, &compiled)?;
    std::fs::rename(&tmp, &cached)?;
    // SAFETY: produced just above by this engine.
    Ok(unsafe { Component::deserialize(engine, &compiled) }?)
}

fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::hash::{Hash, Hasher};
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let digest = Sha256::new()
        .chain_update(wasm)
        .chain_update(engine_hash.finish().to_le_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Advances the engine's epoch for as long as the engine lives.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch thread");
}

/// What a connector's store holds: an empty WASI context, the HTTP context, and the broker.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    /// Epoch ticks that found the connector running during this call.
    cpu_ticks: u64,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: BrokerHooks,
    limits: StoreLimits,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}
