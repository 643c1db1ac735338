//! A real PostgreSQL server for tests, started from the machine's PostgreSQL binaries (Debian's
//! `postgresql` package: `/usr/lib/postgresql/<version>/bin`, or the directory `PG_BIN` names)
//! in a fresh data directory, on a free loopback port. One server per test process, one
//! database per test. PostgreSQL refuses to run as root, so under root it runs as `nobody`.
//!
//! The server lives as long as the test process: a small shell watches a pipe from it, and
//! when the process ends (however it ends) the pipe closes, and the shell stops the server and
//! removes its data directory. Through the same pipe a test can restart the server (a fault
//! test in a process of its own: every database of the process goes down with it).

use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The test process's server.
pub struct Server {
    port: u16,
    /// The server's log (kept across restarts).
    log: PathBuf,
    /// Closed when the process ends: the watcher then stops the server. It also takes
    /// `stop` and `start` a line each.
    lifeline: Mutex<ChildStdin>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The test process's server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| Server::start().unwrap_or_else(|e| panic!("{e:#}")))
}

/// A new, empty database on the test process's server: its URL.
pub async fn database() -> String {
    let server = server();
    let name = format!("test_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
    let (client, connection) =
        tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connecting to the test PostgreSQL server");
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("creating a test database");
    drop(client);
    let _ = connection.await;
    server.url(&name)
}

impl Server {
    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn start() -> Result<Server> {
        let bin = binaries()?;
        let (uid, gid) = unprivileged_user()?;
        let dir = std::env::temp_dir().join(format!(
            "connector-host-pg-{}-{:x}",
            std::process::id(),
            fastrand_seed()
        ));
        std::fs::create_dir(&dir)?;
        let data = dir.join("data");
        if let Some((uid, gid)) = uid.zip(gid) {
            chown(&dir, uid, gid)?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "-D",
        ]);
        initdb.arg(&data);
        as_user(&mut initdb, uid, gid);
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let script = format!(
            "start() {{
                 '{postgres}' -D '{data}' -p {port} -k '{data}' -c listen_addresses=127.0.0.1 \
                 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                 -c max_connections=300 -c shared_buffers=128MB >>'{dir}/server.log' 2>&1 &
                 pid=$!
             }}
             start
             while read command; do
                 case \"$command\" in
                     stop) kill -INT $pid; wait $pid ;;
                     start) start ;;
                 esac
             done
             kill -INT $pid
             wait $pid
             rm -rf '{dir}'",
            postgres = bin.join("postgres").display(),
            data = data.display(),
            dir = dir.display(),
        );
        let mut watcher = Command::new("sh");
        watcher
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut watcher, uid, gid);
        let mut child = watcher.spawn().context("starting PostgreSQL")?;
        let lifeline = child.stdin.take().context("the watcher's pipe")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Accepting connections is not yet accepting queries: wait for the log to say.
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                if log.contains("ready to accept connections") {
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                bail!("PostgreSQL ended at start ({status}): {log}");
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL did not start within a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut lifeline = lifeline;
        lifeline.flush()?;
        Ok(Server {
            port,
            log: dir.join("server.log"),
            lifeline: Mutex::new(lifeline),
        })
    }

    /// Stops the server (a fast shutdown: every connection is told the server is going), keeps
    /// it down for `down`, starts it again and waits until it accepts queries. Every database
    /// of the process goes down with it.
    pub fn restart(&self, down: Duration) -> Result<()> {
        let ready_before = self.times_ready();
        self.command("stop")?;
        std::thread::sleep(down);
        self.command("start")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.times_ready() <= ready_before {
            if Instant::now() > deadline {
                bail!("PostgreSQL did not come back within a minute");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn command(&self, command: &str) -> Result<()> {
        let mut lifeline = self.lifeline.lock().unwrap();
        writeln!(lifeline, "{command}")?;
        lifeline.flush()?;
        Ok(())
    }

    /// How many times the server said it is ready.
    fn times_ready(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("ready to accept connections")
            .count()
    }
}

/// The directory of the PostgreSQL server binaries: `PG_BIN`, else the newest version under
/// `/usr/lib/postgresql`.
fn binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "no PostgreSQL server binaries under /usr/lib/postgresql: install Debian's `postgresql` package (.ci/run does), or set PG_BIN",
    )
}

/// Under root, the uid and gid of `nobody` (PostgreSQL refuses to run as root).
fn unprivileged_user() -> Result<(Option<u32>, Option<u32>)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok((None, None));
    }
    let name = std::ffi::CString::new("nobody")?;
    // SAFETY: a valid C string; the result is read at once, before any other getpw call.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        bail!("running as root, and there is no user `nobody` to run PostgreSQL as");
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok((Some(uid), Some(gid)))
}

fn as_user(command: &mut Command, uid: Option<u32>, gid: Option<u32>) {
    if let Some(gid) = gid {
        command.gid(gid);
    }
    if let Some(uid) = uid {
        command.uid(uid);
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

fn fastrand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
