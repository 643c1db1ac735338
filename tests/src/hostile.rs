//! Support for tests with the hostile connector: variants of its `describe()` answer, a
//! tripwire listener that records anything that reaches it, and a loopback vendor that
//! answers the flood modes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::artifacts;
use crate::sim::{Listen, Server};

/// Where the hostile component keeps the `describe()` answer the tests rewrite.
const MARKER: &[u8] = b"@@HOSTILE-DESCRIBE@@";
const BLOCK_LEN: usize = 4096;

/// Writes a copy of the hostile connector to `dir/file` whose `describe()` applies
/// `overrides` (keys: id, display_name, version, default_base_url, hosts, label,
/// max_batch_size, max_concurrent_requests, sleep_ms, spin). Each variant has its own digest.
pub fn variant(dir: &Path, file: &str, overrides: serde_json::Value) -> PathBuf {
    let mut wasm = std::fs::read(artifacts::HOSTILE).expect("the hostile connector is built");
    let at = wasm
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .expect("the hostile connector carries its describe block")
        + MARKER.len();
    let json = overrides.to_string();
    let room = BLOCK_LEN - MARKER.len();
    assert!(json.len() <= room, "overrides longer than {room} bytes");
    wasm[at..at + room].fill(b' ');
    wasm[at..at + json.len()].copy_from_slice(json.as_bytes());
    let path = dir.join(file);
    std::fs::write(&path, wasm).unwrap();
    path
}

/// What [`with_extra_instances`] adds to the hostile connector: `count` more core instances,
/// each with a linear memory of `memory_mib` (every page written at start, so it is really
/// held) and a table of `table_elements`.
#[derive(Debug, Clone, Copy)]
pub struct ExtraInstances {
    pub count: u32,
    pub memory_mib: u32,
    pub table_elements: u64,
}

/// Writes a copy of the hostile connector to `dir/file` that also instantiates `extra` core
/// instances of a module of its own whenever it is instantiated: a valid component that keeps
/// the contract, whose every call holds the extra memories and tables.
pub fn with_extra_instances(dir: &Path, file: &str, extra: ExtraInstances) -> PathBuf {
    use wasm_encoder::{ComponentSectionId, Encode};
    let mut wasm = std::fs::read(artifacts::HOSTILE).expect("the hostile connector is built");
    let modules = top_level_core_modules(&wasm);
    let module = hoarding_module(extra);
    wasm.push(ComponentSectionId::CoreModule as u8);
    wasm_encoder::ModuleSection(&module).encode(&mut wasm);
    let mut instances = wasm_encoder::InstanceSection::new();
    for _ in 0..extra.count {
        instances.instantiate(modules, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    }
    wasm.push(ComponentSectionId::CoreInstance as u8);
    instances.encode(&mut wasm);
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&wasm)
        .expect("the extended component is valid");
    let path = dir.join(file);
    std::fs::write(&path, wasm).unwrap();
    path
}

/// The core modules a component defines at its top level (the next module's index).
fn top_level_core_modules(component: &[u8]) -> u32 {
    let mut depth = 0;
    let mut modules = 0;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.expect("a readable component") {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::ModuleSection { .. } if depth == 1 => modules += 1,
            wasmparser::Payload::ComponentAliasSection(aliases) if depth == 1 => {
                for alias in aliases {
                    if let wasmparser::ComponentAlias::Outer {
                        kind: wasmparser::ComponentOuterAliasKind::CoreModule,
                        ..
                    } = alias.expect("a readable alias")
                    {
                        modules += 1;
                    }
                }
            }
            _ => {}
        }
    }
    modules
}

/// A core module with a table of `table_elements` function references (when asked) and a
/// memory of `memory_mib` (when asked) whose start function writes a byte to every 4 KiB page.
fn hoarding_module(extra: ExtraInstances) -> wasm_encoder::Module {
    use wasm_encoder::{
        BlockType, CodeSection, Function, FunctionSection, Instruction, MemArg, MemorySection,
        MemoryType, Module, RefType, StartSection, TableSection, TableType, TypeSection, ValType,
    };
    let pages = u64::from(extra.memory_mib) * 16;
    let mut module = Module::new();
    // Sections in the order the format requires: types, functions, tables, memories, start,
    // code.
    if pages > 0 {
        let mut types = TypeSection::new();
        types.ty().function([], []);
        let mut functions = FunctionSection::new();
        functions.function(0);
        module.section(&types).section(&functions);
    }
    if extra.table_elements > 0 {
        let mut tables = TableSection::new();
        tables.table(TableType {
            element_type: RefType::FUNCREF,
            minimum: extra.table_elements,
            maximum: None,
            table64: false,
            shared: false,
        });
        module.section(&tables);
    }
    if pages == 0 {
        return module;
    }
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: pages,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    module
        .section(&memories)
        .section(&StartSection { function_index: 0 });
    // for (i = 0; i < pages * 65536; i += 4096) memory[i] = 1
    let byte = MemArg {
        offset: 0,
        align: 0,
        memory_index: 0,
    };
    let mut touch = Function::new([(1, ValType::I32)]);
    touch
        .instruction(&Instruction::Block(BlockType::Empty))
        .instruction(&Instruction::Loop(BlockType::Empty))
        .instruction(&Instruction::LocalGet(0))
        .instruction(&Instruction::I32Const((pages * 65536) as i32))
        .instruction(&Instruction::I32GeU)
        .instruction(&Instruction::BrIf(1))
        .instruction(&Instruction::LocalGet(0))
        .instruction(&Instruction::I32Const(1))
        .instruction(&Instruction::I32Store8(byte))
        .instruction(&Instruction::LocalGet(0))
        .instruction(&Instruction::I32Const(4096))
        .instruction(&Instruction::I32Add)
        .instruction(&Instruction::LocalSet(0))
        .instruction(&Instruction::Br(0))
        .instruction(&Instruction::End)
        .instruction(&Instruction::End)
        .instruction(&Instruction::End);
    let mut code = CodeSection::new();
    code.function(&touch);
    module.section(&code);
    module
}

/// A loopback listener that accepts connections and keeps every byte sent to it, to prove
/// nothing (and no credential) reached it.
pub struct Tripwire {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Tripwire {
    pub async fn start() -> Tripwire {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let received: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (count, keep) = (connections.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let keep = keep.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buffer = [0u8; 4096];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        keep.lock().unwrap().extend_from_slice(&buffer[..n]);
                    }
                });
            }
        });
        Tripwire {
            addr,
            connections,
            received,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Whether `secret` (or its base64 in a Basic header) arrived.
    pub fn saw(&self, secret: &str) -> bool {
        use base64::Engine as _;
        let received = self.received.lock().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{secret}:x"));
        [secret.as_bytes(), b64.as_bytes()]
            .iter()
            .any(|needle| received.windows(needle.len()).any(|w| w == *needle))
    }
}

/// A loopback vendor for the flood modes: `GET …/lists/ID.json` and `…/clients.json` answer
/// `{}` after `latency`; `GET …/big` answers 16 MiB; `POST …/upload` answers `{}`. It counts
/// requests in progress at once.
pub struct FloodVendor {
    server: Server,
    peak: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// The size of `/big`'s answer.
pub const BIG_ANSWER: usize = 16 << 20;

impl FloodVendor {
    pub async fn start(latency: Duration) -> FloodVendor {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let big = Bytes::from(vec![b'x'; BIG_ANSWER]);
        let (p, r) = (peak.clone(), requests.clone());
        let server = Server::start(
            Listen::plain(0),
            move |method: Method, uri: Uri, _headers: HeaderMap, _body: Bytes| {
                let (in_flight, peak, requests, big) =
                    (in_flight.clone(), p.clone(), r.clone(), big.clone());
                async move {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(latency).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let path = uri.path();
                    if method == Method::GET && path.ends_with("/big") {
                        return (StatusCode::OK, Body::from(big)).into_response();
                    }
                    let answer: Response = (StatusCode::OK, "{}").into_response();
                    answer
                }
            },
        )
        .await
        .unwrap();
        FloodVendor {
            server,
            peak,
            requests,
        }
    }

    /// A base URL on this vendor.
    pub fn base_url(&self) -> String {
        format!("http://{}/api", self.server.addr())
    }

    /// The most requests it had in progress at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Requests it received.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// This process's resident memory now, in bytes (Linux).
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples this process's resident memory every few milliseconds while alive; `peak` gives
/// the highest seen.
pub struct RssSampler {
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    pub fn start() -> RssSampler {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(resident_bytes()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(resident_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssSampler { peak, stop }
    }

    /// The highest resident memory seen so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(resident_bytes())
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
