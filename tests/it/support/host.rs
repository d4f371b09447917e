//! A config written for one test, and hosts run from it: in-process (with an
//! injected shutdown) or as the real `sluice` binary (to kill it).

use super::{RedisServer, plugins_dir};
use redis::AsyncCommands;
use redis::streams::{StreamId, StreamRangeReply};
use sluice::config::Config;
use sluice::host::RunOptions;
use sluice::reload::ReloadReport;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A temp folder holding a `config.toml` that points at a test's Redis and
/// the built plugins.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Fixture {
    /// A config with `[host]` keys `host` (may be empty) and the given
    /// handler tables.
    pub fn new(redis: &RedisServer, host: &str, handlers: &str) -> Fixture {
        Self::write(tempfile::tempdir().unwrap(), redis, &plugins_dir().display().to_string(), host, handlers)
    }

    fn write(dir: tempfile::TempDir, redis: &RedisServer, plugins: &str, host: &str, handlers: &str) -> Fixture {
        Self::write_with(dir, &format!("url = \"{}\"", redis.url()), plugins, host, handlers)
    }

    /// A config whose `[redis]` table holds `redis` (its keys as TOML), with
    /// `[host]` keys `host` and the given handler tables.
    pub fn with_redis(redis: &str, host: &str, handlers: &str) -> Fixture {
        Self::write_with(tempfile::tempdir().unwrap(), redis, &plugins_dir().display().to_string(), host, handlers)
    }

    fn write_with(dir: tempfile::TempDir, redis: &str, plugins: &str, host: &str, handlers: &str) -> Fixture {
        let config_path = dir.path().join("config.toml");
        let text = format!("[redis]\n{redis}\n\n[host]\nplugins = \"{plugins}\"\n{host}\n\n{handlers}\n");
        std::fs::write(&config_path, text).unwrap();
        Fixture { dir, config_path }
    }

    /// Copies the plugins compiled into `other`'s cache (`.sluice/cache/`)
    /// into this fixture's, so that a host started here loads them in
    /// milliseconds instead of compiling them again (seconds on a machine
    /// busy with other tests).
    pub fn copy_cache_from(&self, other: &Fixture) {
        let (from, to) = (other.dir.path().join(".sluice/cache"), self.dir.path().join(".sluice/cache"));
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(&from).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
        }
    }

    /// Like [`Fixture::new`], but with a plugins folder of the test's own
    /// (`plugins/` beside the config) holding `copies`: (file name, built
    /// plugin to copy), so the test can change plugin files.
    pub fn with_own_plugins(redis: &RedisServer, host: &str, handlers: &str, copies: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        let plugins = dir.path().join("plugins").display().to_string();
        let fx = Self::write(dir, redis, &plugins, host, handlers);
        for (name, built) in copies {
            fx.install_plugin(name, built);
        }
        fx
    }

    /// Copies the built plugin `built` (e.g. `behave.wasm`) over `name` in
    /// this fixture's own plugins folder, in place (not atomically), as `cp`
    /// would.
    pub fn install_plugin(&self, name: &str, built: &str) {
        std::fs::copy(plugins_dir().join(built), self.dir.path().join("plugins").join(name)).unwrap();
    }

    /// Writes `bytes` as plugin `name` in this fixture's own plugins folder.
    pub fn write_plugin(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.path().join("plugins").join(name), bytes).unwrap();
    }

    /// Replaces the config's handler tables with `handlers`, keeping the rest.
    pub fn rewrite_handlers(&self, handlers: &str) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let head = text.split("[handlers.").next().unwrap().to_owned();
        std::fs::write(&self.config_path, format!("{head}{handlers}\n")).unwrap();
    }

    /// Runs the host in this process, watching for changes, with every
    /// reload's outcome sent to the returned receiver. Returns once the host
    /// serves and watches.
    pub async fn start_watching(&self) -> (RunningHost, mpsc::UnboundedReceiver<ReloadReport>) {
        super::log_to_test_output();
        let config = self.config();
        let (tx, rx) = oneshot::channel::<()>();
        let (reports, received) = mpsc::unbounded_channel();
        let options = RunOptions { watch: true, reports: Some(reports) };
        let task = tokio::spawn(sluice::host::run_with(
            config,
            async {
                let _ = rx.await;
            },
            options,
        ));
        let mut received = received;
        // Starting compiles the plugins not in the cache yet: seconds each on
        // a machine busy with other tests (some compile Python and JavaScript).
        let first = tokio::time::timeout(super::STARTED, received.recv()).await.expect("host started in time");
        assert!(matches!(first, Some(ReloadReport::Started { .. })), "{first:?}");
        (RunningHost { stop: Some(tx), task }, received)
    }

    /// The parsed config.
    pub fn config(&self) -> Config {
        Config::load(&self.config_path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs the host in this process until [`RunningHost::stop`].
    pub fn start(&self) -> RunningHost {
        super::log_to_test_output();
        let config = self.config();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice::host::run(config, async {
            let _ = rx.await;
        }));
        RunningHost { stop: Some(tx), task }
    }

    /// Runs the real `sluice run` binary on this config.
    pub fn spawn_binary(&self) -> Child {
        self.spawn_binary_with(&[])
    }

    /// Runs `sluice run` on this config with extra arguments.
    pub fn spawn_binary_with(&self, args: &[&str]) -> Child {
        self.run_command().args(args).spawn().expect("spawn sluice")
    }

    /// Runs `sluice run` on this config with extra environment variables.
    pub fn spawn_binary_with_env(&self, vars: &[(&str, &str)]) -> Child {
        self.run_command().envs(vars.iter().copied()).spawn().expect("spawn sluice")
    }

    /// Runs `sluice run --log-format json` on this config at `rust_log`, its
    /// stderr piped (read it with [`json_log_lines`]).
    pub fn spawn_binary_logging_json(&self, rust_log: &str) -> Child {
        self.logging_json(rust_log).spawn().expect("spawn sluice")
    }

    /// The same on CPU `cpu` only (with [`BusyLoops`] there: a host on a
    /// machine with no CPU to spare).
    pub fn spawn_binary_on_cpu_logging_json(&self, cpu: usize, rust_log: &str) -> Child {
        let mut command = self.logging_json(rust_log);
        pin_to_cpu(&mut command, cpu);
        command.spawn().expect("spawn sluice")
    }

    fn logging_json(&self, rust_log: &str) -> Command {
        let mut command = self.run_command();
        command.args(["--log-format", "json"]).env("RUST_LOG", rust_log).stderr(Stdio::piped());
        command
    }

    fn run_command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.arg("run").arg("--config").arg(&self.config_path).env("RUST_LOG", "warn").stdin(Stdio::null());
        command
    }
}

/// The lines a `sluice run --log-format json` wrote to `stderr`, parsed;
/// panics on a line that is not JSON.
pub fn json_log_lines(stderr: &[u8]) -> Vec<serde_json::Value> {
    let stderr = String::from_utf8_lossy(stderr);
    stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}"))).collect()
}

/// The log lines (`json_log_lines`) whose message contains `words`.
pub fn saying<'a>(lines: &'a [serde_json::Value], words: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["fields"]["message"].as_str().unwrap_or("").contains(words)).collect()
}

/// Sends `signal` (`TERM`, `STOP`, `CONT`, ...) to process `pid` with
/// `kill`; whether it was sent.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().is_ok_and(|s| s.success())
}

/// Sends SIGTERM to a `sluice` process and waits (up to [`super::SOON`])
/// for it to drain and exit; its exit status.
pub async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    assert!(send_signal(child.id(), "TERM"));
    super::eventually(super::SOON, "sluice exits after SIGTERM", || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await
}

/// The last CPU this process may run on: where a test pins a host and the
/// [`BusyLoops`] beside it.
pub fn last_cpu() -> usize {
    // SAFETY: a zeroed cpu_set_t is an empty set; the call fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut set) }, 0, "sched_getaffinity");
    (0..libc::CPU_SETSIZE as usize).rev().find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).expect("a CPU")
}

/// Whether this process (and so a host it starts) may lift a thread out of
/// the idle scheduling class: with `CAP_SYS_NICE` (root, outside a
/// container that drops it) or an `RLIMIT_NICE` of 20.
pub fn may_leave_idle_priority() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain syscalls on this short-lived thread, valid pointers.
        unsafe {
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
                && libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == 0
        }
    })
    .join()
    .unwrap()
}

/// Makes `command`'s process run on CPU `cpu` only.
fn pin_to_cpu(command: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec, only a system call on plain memory.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            match libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        })
    };
}

/// Processes that spin at normal priority on one CPU until dropped: that
/// CPU has no time to spare for idle-priority threads. One test at a time
/// has them (the others run on meanwhile, with one CPU fewer).
pub struct BusyLoops {
    loops: Vec<Child>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Whose turn it is to keep a CPU busy.
static BUSY_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl BusyLoops {
    /// `n` spinning processes on CPU `cpu`, once no other test has any.
    pub async fn on_cpu(cpu: usize, n: usize) -> BusyLoops {
        let turn = BUSY_TURN.lock().await;
        let spin = |_| {
            let mut command = Command::new("sh");
            command.args(["-c", "while :; do :; done"]).stdin(Stdio::null());
            pin_to_cpu(&mut command, cpu);
            command.spawn().expect("spawn a busy loop")
        };
        BusyLoops { loops: (0..n).map(spin).collect(), _turn: turn }
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for child in &mut self.loops {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A host running in this process.
pub struct RunningHost {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningHost {
    /// Signals shutdown and waits for the host to drain and return.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.expect("host task panicked").expect("host failed");
    }
}

/// What the helpers below talk to Redis through: one server's connection
/// or a cluster's.
pub trait Conn: redis::aio::ConnectionLike + Clone + Send + Sync {}

impl<T: redis::aio::ConnectionLike + Clone + Send + Sync> Conn for T {}

/// Adds an entry with `fields` to `stream`.
pub async fn xadd(conn: &mut impl Conn, stream: &str, fields: &[(&str, &str)]) -> String {
    conn.xadd(stream, "*", fields).await.unwrap()
}

/// Adds a `behave` event: type `event_type`, data `data` (JSON).
pub async fn send(conn: &mut impl Conn, stream: &str, event_type: &str, data: serde_json::Value) -> String {
    xadd(conn, stream, &[("type", event_type), ("data", &data.to_string())]).await
}

/// Every entry of `stream`.
pub async fn entries(conn: &mut impl Conn, stream: &str) -> Vec<StreamId> {
    let reply: StreamRangeReply = conn.xrange_all(stream).await.unwrap();
    reply.ids
}

/// Field `name` of `entry` as a string, panicking if missing.
pub fn field(entry: &StreamId, name: &str) -> String {
    entry.get::<String>(name).unwrap_or_else(|| panic!("entry {} has no field {name}: {:?}", entry.id, entry.map))
}

/// Runs the `sluice` binary with `args` and `--config config`.
pub fn sluice(args: &[&str], config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).arg("--config").arg(config).output().expect("run sluice")
}

/// The milliseconds part of an entry id.
pub fn id_ms(id: &str) -> u64 {
    id.split('-').next().unwrap().parse().unwrap()
}

/// The postings `behave`'s `ledger` action committed to `out` (its
/// entries) for `account`, in commit order: (seq, the seq it followed,
/// the ms of its entry id).
pub fn ledger_commits(out: &[StreamId], account: &str) -> Vec<(u64, u64, u64)> {
    out.iter()
        .filter_map(|e| {
            let data: serde_json::Value = serde_json::from_str(&field(e, "data")).unwrap();
            (data["account"] == account)
                .then(|| (data["seq"].as_u64().unwrap(), data["after"].as_u64().unwrap(), id_ms(&e.id)))
        })
        .collect()
}

/// How many entries of `stream` are pending in `group` (0 if the group does
/// not exist yet).
pub async fn pending(conn: &mut impl Conn, stream: &str, group: &str) -> usize {
    let v: redis::RedisResult<redis::Value> = redis::cmd("XPENDING").arg(stream).arg(group).query_async(conn).await;
    match v {
        Ok(redis::Value::Array(parts)) => match parts.first() {
            Some(redis::Value::Int(n)) => *n as usize,
            _ => 0,
        },
        _ => 0,
    }
}

/// Changes the rules of Redis's `default` user (the one hosts and tests
/// connect as) with `ACL SETUSER default RULE`: `-xgroup|create` keeps a
/// host from making a consumer group again (Redis 7.0 or later).
pub async fn acl_default(conn: &mut impl Conn, rule: &str) {
    let () = redis::cmd("ACL").arg("SETUSER").arg("default").arg(rule).query_async(conn).await.unwrap();
}

/// The `ACL LOG` entries of `conn`'s server, one line each: every command
/// or key a user was refused, with the reason, the object and the user.
pub async fn acl_refusals(conn: &mut impl Conn) -> Vec<String> {
    fn text(v: &redis::Value) -> String {
        match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::SimpleString(s) => s.clone(),
            redis::Value::Int(n) => n.to_string(),
            redis::Value::Double(d) => d.to_string(),
            redis::Value::Array(items) | redis::Value::Set(items) => {
                items.iter().map(text).collect::<Vec<_>>().join(" ")
            }
            redis::Value::Map(pairs) => {
                pairs.iter().map(|(k, v)| format!("{}={}", text(k), text(v))).collect::<Vec<_>>().join(" ")
            }
            other => format!("{other:?}"),
        }
    }
    let log: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query_async(conn).await.unwrap();
    log.iter().map(text).collect()
}

/// Redis's `INFO commandstats`: a line per command run since the last
/// `CONFIG RESETSTAT` (read one figure with [`command_stat`]).
pub async fn command_stats(conn: &mut impl Conn) -> String {
    redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap()
}

/// The figure `stat` (`calls`, `failed_calls`, ...) of `command` in
/// `stats`; 0 if the command has not run.
pub fn command_stat(stats: &str, command: &str, stat: &str) -> u64 {
    let Some(line) = stats.lines().find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:"))) else { return 0 };
    let value = line.split(',').find_map(|kv| kv.strip_prefix(stat)?.strip_prefix('='));
    value.unwrap_or_else(|| panic!("no {stat} in {line}")).parse().unwrap()
}

/// How many entries `group` has finished with: those up to its last
/// delivered id, minus those still pending.
pub async fn finished(conn: &mut impl Conn, stream: &str, group: &str) -> usize {
    let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = conn.xinfo_groups(stream).await;
    let Ok(groups) = groups else { return 0 }; // the host has not created the stream yet
    let Some(g) = groups.groups.iter().find(|g| g.name == group) else { return 0 };
    let delivered: StreamRangeReply = conn.xrange(stream, "-", &g.last_delivered_id).await.unwrap();
    delivered.ids.len().saturating_sub(g.pending)
}

/// Waits until `group` has finished `n` entries of `stream`.
pub async fn until_finished(conn: &impl Conn, stream: &str, group: &str, n: usize) {
    let what = format!("{n} entries of {stream} finished by {group}");
    super::eventually(super::SOON, &what, || {
        let mut c = conn.clone();
        async move { (finished(&mut c, stream, group).await == n).then_some(()) }
    })
    .await
}

/// Waits until `stream` holds at least `n` entries and returns them all.
pub async fn until_entries(conn: &impl Conn, stream: &str, n: usize) -> Vec<StreamId> {
    super::eventually(super::SOON, &format!("{n} entries in {stream}"), || {
        let mut c = conn.clone();
        async move {
            let e = entries(&mut c, stream).await;
            (e.len() >= n).then_some(e)
        }
    })
    .await
}

/// Waits until exactly `n` entries of `stream` are pending in `group`.
pub async fn until_pending(conn: &impl Conn, stream: &str, group: &str, n: usize) {
    let what = format!("{n} entries of {stream} pending in {group}");
    super::eventually(super::SOON, &what, || {
        let mut c = conn.clone();
        async move { (pending(&mut c, stream, group).await == n).then_some(()) }
    })
    .await
}

/// Reads every new entry of `stream` as consumer `c` of `group`, leaving
/// them pending: a delivery in progress, as a host would have it.
pub async fn read_pending(conn: &mut impl Conn, stream: &str, group: &str) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("c")
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
}

/// `sluice run` processes, killed when dropped, so a failing test leaves
/// none behind.
pub struct Hosts(pub Vec<Child>);

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in &mut self.0 {
            let _ = host.kill();
            let _ = host.wait();
        }
    }
}
