//! The sandbox connectors run in: one wasmtime engine, a fresh store per call under one memory
//! budget for everything its instance allocates (and a host-wide budget across calls), a CPU
//! budget, a wall-clock deadline and a cap on what it hands the host, a WASI context that
//! grants nothing, and `wasi:http` wired to the run's [`Broker`].

mod compile;
mod memory;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::broker::{Broker, BrokerHooks};
use crate::contract::{Connector, ConnectorPre};
use memory::{CallCaps, CallMemory, HostMemory};
pub use memory::{CallMemoryExceeded, HostMemoryBusy};

/// Resource limits applied to every connector call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// What one call's instance may allocate, all together: every linear memory and every
    /// table (8 bytes an element) of every core instance of the component, from their initial
    /// sizes through every growth.
    pub memory_bytes: usize,
    /// What all the calls of this host may allocate at once (the same count, summed over every
    /// call under way). A call that needs room waits for others to finish, then fails as
    /// retryable. Defaults to a quarter of the machine's memory, at most 2 GiB.
    pub host_memory_bytes: usize,
    /// Core instances, linear memories and tables one call's component may create.
    pub max_instances: usize,
    pub max_memories: usize,
    pub max_tables: usize,
    /// Wall-clock time one call (`describe`, `validate`, one `export-batch`) may take, including
    /// the time its HTTP requests spend waiting on the vendor.
    pub call_timeout: Duration,
    /// CPU time one call may spend running connector code (waiting on the network is not
    /// counted), measured in 10 ms epoch ticks. `None` turns the budget and epoch interruption
    /// off: only for trusted connectors, since a busy loop then holds its thread and the
    /// wall-clock deadline cannot stop it.
    pub cpu_time: Option<Duration>,
    /// Most bytes a connector may hand the host at once: a call's result, or what it passes
    /// to one host call (strings and lists, counted as the host would hold them before any is
    /// copied, so results that share one buffer are counted each time).
    pub max_return_bytes: usize,
    /// Host resources (requests, headers, streams, timers) one call may hold at once, so a
    /// connector cannot make the host allocate without bound.
    pub max_resources: usize,
    /// Wall-clock time `describe` may take when a plugin loads (its CPU is limited by
    /// `cpu_time` as every call's).
    pub describe_timeout: Duration,
    /// CPU time compiling one component may take (the threads of that compile only, so a busy
    /// machine does not count against it). A compile happens once per file: its result is
    /// cached.
    pub compile_cpu_time: Duration,
    /// Largest component file loaded from the plugin directory (checked before reading).
    pub max_plugin_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let memory_bytes = 128 << 20;
        Limits {
            memory_bytes,
            host_memory_bytes: default_host_memory(memory_bytes),
            max_instances: 64,
            max_memories: 16,
            max_tables: 64,
            call_timeout: Duration::from_secs(300),
            cpu_time: Some(Duration::from_secs(30)),
            max_return_bytes: 4 << 20,
            max_resources: 1_000,
            describe_timeout: Duration::from_secs(30),
            compile_cpu_time: Duration::from_secs(120),
            max_plugin_bytes: 32 << 20,
        }
    }
}

/// A quarter of the memory this process may use (the machine's, or its control group's limit
/// when lower), at most 2 GiB and at least room for two calls.
pub fn default_host_memory(call_bytes: usize) -> usize {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let mut physical = (pages.max(0) as u64).saturating_mul(page.max(0) as u64);
    if let Some(limit) = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        physical = physical.min(limit);
    }
    let quarter = usize::try_from(physical / 4).unwrap_or(usize::MAX);
    quarter.min(2 << 30).max(call_bytes.saturating_mul(2))
}

/// How long a call's growth waits for room in the host's budget before the call fails as
/// retryable.
const HOST_MEMORY_WAIT: Duration = Duration::from_secs(10);

/// How often the engine's epoch advances; a running connector yields to the host at each tick,
/// so a busy loop cannot hold a thread past its deadline.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine, the linker with the imports connectors get, and the compiled-component cache.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<PluginState>,
    limits: Limits,
    cache_dir: Option<PathBuf>,
    host_memory: Arc<HostMemory>,
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
            host_memory: HostMemory::new(limits.host_memory_bytes),
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

    /// Compiles a component, or loads it from the cache when these exact bytes were compiled
    /// before by a compatible engine; a compile is limited by its own CPU time.
    pub(crate) async fn compile(&self, wasm: Vec<u8>) -> Result<Component> {
        compile::compile(
            &self.engine,
            self.cache_dir.as_deref(),
            wasm,
            self.limits.compile_cpu_time,
        )
        .await
    }

    /// Bytes held by connector calls under way (against [`Limits::host_memory_bytes`]).
    pub fn memory_in_use(&self) -> usize {
        self.host_memory.in_use()
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
    pub(crate) async fn call<R>(
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
            hooks: BrokerHooks::new(broker),
            memory: CallMemory::new(
                CallCaps {
                    bytes: self.limits.memory_bytes,
                    instances: self.limits.max_instances,
                    memories: self.limits.max_memories,
                    tables: self.limits.max_tables,
                    wait: HOST_MEMORY_WAIT,
                },
                self.host_memory.clone(),
            ),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter_async(|s| &mut s.memory);
        // What the connector hands the host (a result, a host call's arguments) is counted as
        // it is read and refused past the cap, before it is copied.
        store.set_hostcall_fuel(self.limits.max_return_bytes);
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
        match tokio::time::timeout(deadline, run).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if let Some(busy) = e.downcast_ref::<HostMemoryBusy>() {
                    // Not the connector's fault: the caller may try again.
                    return Err(anyhow::Error::new(*busy));
                }
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
                Err(anyhow!(text))
            }
            Err(_) => Err(anyhow!(
                "the connector did not finish within the {} s call deadline",
                deadline.as_secs_f64()
            )),
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
    if let Some(exceeded) = error.downcast_ref::<CallMemoryExceeded>() {
        return exceeded.to_string();
    }
    if text.contains("fuel allocated for hostcalls has been exhausted") {
        return format!(
            "the connector tried to hand the host more than {0} bytes at once, over the {0}-byte limit on what a call may return (or pass to the host in one call)",
            limits.max_return_bytes
        );
    }
    for (limit, what, count) in [
        ("instance", "core instances", limits.max_instances),
        ("memor", "linear memories", limits.max_memories),
        ("table", "tables", limits.max_tables),
    ] {
        if text.contains("count too high") && text.contains(limit) {
            return format!(
                "the connector's component creates more than {count} {what}, the most one connector may have"
            );
        }
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
    memory: CallMemory,
}

impl PluginState {
    /// Requests the connector asked to send during this call.
    pub(crate) fn requests_asked(&self) -> u64 {
        self.hooks.asked()
    }
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
