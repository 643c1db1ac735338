//! Compiling a component, once: the compiled code is cached under a digest of the component's
//! bytes and of the engine's settings, so every process sharing the cache directory loads it
//! in milliseconds after the first. A compile is limited by the CPU time its own threads
//! spend, not by wall time, so a machine busy with other work never makes a legitimate
//! connector miss its limit; the input's size is capped before it is read.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How often the CPU spent by a compile is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// Compiles `wasm` (or loads it from the cache), refusing a compile that spends more than
/// `cpu_budget` of CPU time on its threads. Compilation cannot be interrupted: a compile past
/// its budget goes on at the lowest priority on its own threads until it ends, and its result
/// is thrown away.
pub(crate) async fn compile(
    engine: &Engine,
    cache_dir: Option<&Path>,
    wasm: Vec<u8>,
    cpu_budget: Duration,
) -> Result<Component> {
    let (engine, cache_dir) = (engine.clone(), cache_dir.map(Path::to_path_buf));
    if let Some(component) = cached(&engine, cache_dir.as_deref(), &wasm) {
        return Ok(component);
    }
    let threads = CompileThreads::default();
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let pool = threads.pool()?;
    std::thread::Builder::new()
        .name("compile-component".into())
        .spawn(move || {
            let compiled = pool.install(|| compile_and_cache(&engine, cache_dir.as_deref(), &wasm));
            let _ = tx.send(compiled);
        })
        .context("cannot start a compiler thread")?;
    loop {
        match tokio::time::timeout(WATCH_EVERY, &mut rx).await {
            Ok(Ok(compiled)) => return compiled,
            Ok(Err(_)) => bail!("the compiler thread ended without an answer"),
            Err(_) => {
                let spent = threads.cpu_time();
                if spent > cpu_budget {
                    threads.lower_priority();
                    bail!(
                        "compiling it took more than the {} s of CPU time a connector may take to compile (after {:.1} s it was stopped; an unusually large or complex component: check it is the file you meant, or raise --compile-cpu-seconds)",
                        cpu_budget.as_secs_f64(),
                        spent.as_secs_f64()
                    );
                }
            }
        }
    }
}

/// The component from the cache, when these exact bytes were compiled before by an engine
/// with the same settings.
fn cached(engine: &Engine, cache_dir: Option<&Path>, wasm: &[u8]) -> Option<Component> {
    let path = cache_dir?.join(format!("{}.cwasm", cache_key(engine, wasm)));
    if !path.is_file() {
        return None;
    }
    // SAFETY: files in the cache directory are written only by `compile_and_cache`, under a
    // name that binds them to these exact bytes and this engine build.
    unsafe { Component::deserialize_file(engine, &path) }.ok()
}

/// Compiles `wasm`, keeping the result in the cache when there is one.
fn compile_and_cache(engine: &Engine, cache_dir: Option<&Path>, wasm: &[u8]) -> Result<Component> {
    const NOT_A_COMPONENT: &str = "not a WebAssembly component this host can compile";
    let Some(cache_dir) = cache_dir else {
        return Component::new(engine, wasm).map_err(|e| anyhow!(e).context(NOT_A_COMPONENT));
    };
    let compiled = engine
        .precompile_component(wasm)
        .map_err(|e| anyhow!(e).context(NOT_A_COMPONENT))?;
    create_private_dir(cache_dir)?;
    let path = cache_dir.join(format!("{}.cwasm", cache_key(engine, wasm)));
    // Write then rename, so a concurrent start never reads half a file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, &compiled)?;
    std::fs::rename(&tmp, &path)?;
    // SAFETY: produced just above by this engine.
    Ok(unsafe { Component::deserialize(engine, &compiled) }?)
}

/// Creates the cache directory readable by its owner only (compiled code is executable).
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the cache directory {}", dir.display()))
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

/// The threads of one compile (a thread pool of its own, so that wasmtime's parallel
/// compilation runs on threads whose CPU clocks belong to this compile alone).
#[derive(Default, Clone)]
struct CompileThreads {
    clocks: Arc<Mutex<Vec<ThreadClock>>>,
}

#[derive(Clone, Copy)]
struct ThreadClock {
    clock: libc::clockid_t,
    tid: libc::pid_t,
}

impl CompileThreads {
    fn pool(&self) -> Result<rayon::ThreadPool> {
        let clocks = self.clocks.clone();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("compile-{i}"))
            .start_handler(move |_| {
                if let Some(clock) = ThreadClock::current() {
                    clocks.lock().unwrap().push(clock);
                }
            })
            .build()
            .map_err(|e| anyhow!("cannot start the compiler's threads: {e}"))
    }

    /// CPU time the compile's threads have spent so far.
    fn cpu_time(&self) -> Duration {
        self.clocks
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| c.cpu_time())
            .sum()
    }

    /// Lets a compile that went past its budget finish without competing with useful work.
    fn lower_priority(&self) {
        for clock in self.clocks.lock().unwrap().iter() {
            // SAFETY: setpriority on a thread id of this process; failure is harmless.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, clock.tid as libc::id_t, 19);
            }
        }
    }
}

impl ThreadClock {
    /// The calling thread's CPU clock.
    fn current() -> Option<ThreadClock> {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self is always valid; `clock` is a valid out pointer.
        let status = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        (status == 0).then_some(ThreadClock { clock, tid })
    }

    fn cpu_time(&self) -> Option<Duration> {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid out pointer; a clock of a thread that ended gives an error.
        let status = unsafe { libc::clock_gettime(self.clock, &mut now) };
        (status == 0).then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pools_threads_report_the_cpu_they_spend() {
        let threads = CompileThreads::default();
        let pool = threads.pool().unwrap();
        // Spins until this pool thread itself has used 200 ms of CPU, however busy the
        // machine is.
        pool.install(|| {
            let own = || {
                let mut now = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: `now` is a valid out pointer.
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
                Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
            };
            let start = own();
            let mut x = 1u64;
            while own() - start < Duration::from_millis(200) {
                x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
            }
        });
        let spent = threads.cpu_time();
        assert!(
            spent >= Duration::from_millis(200) && spent < Duration::from_secs(5),
            "{spent:?}"
        );
    }
}
