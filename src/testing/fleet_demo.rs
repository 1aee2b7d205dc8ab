//! `corral demo --fleet N`: the flash sale against a fleet of corral
//! instances sharing one Redis, on loopback.
//!
//! Starts the demo origin ([`super::demo`]: 120 ms, 429 beyond 100 requests
//! in flight) and a Redis: the one `--redis` names, or a `redis-server` from
//! `PATH` on a free loopback port in a temporary directory, persisting
//! nothing, killed by PID when the demo ends, however it ends
//! ([`RedisProcess`]). Then the same burst, spread round-robin over N
//! in-process instances, runs twice, each time on a product no one has asked
//! for yet: once with N instances that know nothing of each other (N origin
//! requests: each instance coalesces its own clients), once with N instances
//! in one fleet (one origin request for all of them; the other instances'
//! clients are answered from Redis, `Cache-Status: ...; detail=fleet`).
//!
//! Nothing waits by sleeping: the `redis-server` is ready when its log says
//! so and it answers PING, an instance has joined the fleet when its
//! `corral_fleet_up` gauge says so, and the bursts wait on connection
//! counters, each wait bounded.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::ProgressBar;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::demo::{
    self, DEMO_PATH, DEMO_PATH_FLEET, DemoError, DemoOptions, WaveReport, clients_within,
    open_file_limit,
};
use super::mock_origin::MockOrigin;
use crate::Corral;
use crate::config::{Config, FleetConfig};
use crate::metrics::FleetMetrics;

/// Bound on a `redis-server` this demo starts becoming ready.
const REDIS_READY_WITHIN: Duration = Duration::from_secs(10);

/// Bound on one PING (connecting included).
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Ports tried for a `redis-server` before giving up (another process may
/// take a free port between the probe and Redis binding it).
const REDIS_START_ATTEMPTS: usize = 3;

/// What `redis-server` logs once it accepts connections (Redis 6 and 7, Valkey).
const REDIS_READY_LINE: &str = "Ready to accept connections";

/// Lines of a `redis-server`'s output kept for an error message.
const REDIS_LOG_LINES: usize = 20;

/// Bound on every instance of a fleet reporting `corral_fleet_up 1`.
const JOIN_WITHIN: Duration = Duration::from_secs(10);

/// The instances' `[fleet] lookup_timeout`: generous, so a machine busy with
/// hundreds of demo clients does not time out Redis round trips (in
/// production the default 50 ms bounds what Redis may add to a request).
const DEMO_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// Bound on removing the demo's keys from a Redis it was given.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What `corral demo --fleet` does.
#[derive(Debug, Clone)]
pub struct FleetDemoOptions {
    /// Corral instances (at least 2).
    pub instances: usize,
    /// A Redis to use (`redis://host:port/`); `None`: start `redis-server`.
    pub redis: Option<String>,
    /// Clients, origin delay and limit, progress bar: as in `corral demo`;
    /// the clients are spread round-robin over the instances.
    pub demo: DemoOptions,
}

/// One run of the burst over the instances.
#[derive(Debug, Clone, Default)]
pub struct FleetRun {
    /// The product asked for (a different one per run, so each is cold).
    pub path: &'static str,
    /// The burst's figures (`origin_requests` included).
    pub wave: WaveReport,
    /// Fleet-wide fetch lock elections the instances won (0 without a fleet).
    pub elections_won: u64,
    /// Elections the instances lost, and waited on the winner instead.
    pub elections_lost: u64,
}

/// Everything `corral demo --fleet` measured.
#[derive(Debug, Clone)]
pub struct FleetDemoReport {
    /// Instances in each run.
    pub instances: usize,
    /// Clients per burst actually used (fewer than asked for when the
    /// open-file limit is too low).
    pub clients: usize,
    /// Which Redis the fleet used, for the reader (no password shown).
    pub redis: String,
    /// Things the reader should know about the run.
    pub notes: Vec<String>,
    /// The burst over instances without the fleet tier.
    pub alone: FleetRun,
    /// The burst over the same number of instances sharing Redis.
    pub fleet: FleetRun,
}

/// Why `corral demo --fleet` could not run. Every message starts with
/// `corral demo --fleet`, ready to print as it is.
#[derive(Debug, thiserror::Error)]
pub enum FleetDemoError {
    /// Fewer than two instances make no fleet.
    #[error("corral demo --fleet needs at least 2 instances (got {0})")]
    TooFewInstances(usize),
    /// No `--redis` and no `redis-server` on `PATH`.
    #[error(
        "corral demo --fleet needs Redis: install redis-server (apt-get install redis-server) or pass --redis redis://host:port/"
    )]
    NoRedis,
    /// The `redis-server` started for the demo did not come up.
    #[error(
        "corral demo --fleet: redis-server did not come up ({0}); pass --redis redis://host:port/ to use a running one"
    )]
    RedisStart(String),
    /// The Redis named by `--redis` does not answer PING.
    #[error("corral demo --fleet: Redis at {url} does not answer PING: {why}")]
    RedisUnreachable {
        /// The URL, without its password.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// An instance did not report `corral_fleet_up 1` in time.
    #[error(
        "corral demo --fleet: instance {0} did not join the fleet within {JOIN_WITHIN:?} (Redis at {1})"
    )]
    NotJoined(usize, String),
    /// The origin, an instance or the clients could not start.
    #[error("corral demo --fleet: {0}")]
    Demo(#[from] DemoError),
}

impl From<std::io::Error> for FleetDemoError {
    fn from(error: std::io::Error) -> Self {
        FleetDemoError::Demo(DemoError::Bind(error))
    }
}

/// Runs the burst over `options.instances` instances twice (alone, then as
/// a fleet), each on a cold product, and returns their figures. A
/// `redis-server` it started is stopped before it returns, and also when the
/// returned future is dropped unfinished.
///
/// # Errors
/// [`FleetDemoError`] when there are fewer than 2 instances, no Redis can be
/// had, an instance does not join the fleet, or the origin, an instance or
/// the clients cannot start.
pub async fn run(options: &FleetDemoOptions) -> Result<FleetDemoReport, FleetDemoError> {
    if options.instances < 2 {
        return Err(FleetDemoError::TooFewInstances(options.instances));
    }
    if options.demo.clients == 0 {
        return Err(DemoError::Start("--clients must be at least 1".into()).into());
    }
    let file_limit = open_file_limit();
    let (clients, fd_note) = clients_within(file_limit, options.demo.clients);
    if clients == 0 {
        return Err(DemoError::FileLimit(file_limit.unwrap_or(0)).into());
    }
    let mut notes: Vec<String> = fd_note.into_iter().collect();

    // Redis first: without it there is nothing to show.
    let (url, started, redis) = match &options.redis {
        Some(url) => {
            ping(url)
                .await
                .map_err(|why| FleetDemoError::RedisUnreachable {
                    url: redacted(url),
                    why,
                })?;
            (url.clone(), None, format!("{} (given)", redacted(url)))
        }
        None => {
            let process = RedisProcess::start().await?;
            let about = format!(
                "{} on 127.0.0.1:{}, started for the demo and stopped at its end",
                process.version(),
                process.port()
            );
            (process.url(), Some(process), about)
        }
    };
    // Keys of their own, so a Redis shared with anything else (or an earlier
    // run) holds nothing this run asks for.
    let key_prefix = format!("corral-demo:{:016x}:", fastrand::u64(..));

    let origin = demo::start_origin(&options.demo).await?;
    let bar = demo::progress_bar(options.demo.progress, 2 * clients);
    let burst = Burst {
        origin: &origin,
        clients,
        bar: &bar,
    };

    bar.set_message("alone");
    let instances = Instances::start(&origin, options.instances, None).await?;
    let (alone, trouble) = burst.run(&instances, DEMO_PATH).await;
    notes.extend(trouble.map(|t| format!("alone: {t}")));
    instances.stop().await;

    bar.set_message("fleet");
    let fleet_config = FleetConfig {
        redis: Some(toml::Spanned::new(0..0, url.clone())),
        key_prefix: key_prefix.clone(),
        lookup_timeout: DEMO_LOOKUP_TIMEOUT,
        ..FleetConfig::default()
    };
    let instances = Instances::start(&origin, options.instances, Some(fleet_config)).await?;
    if let Err(index) = instances.joined().await {
        return Err(FleetDemoError::NotJoined(index + 1, redacted(&url)));
    }
    let (fleet, trouble) = burst.run(&instances, DEMO_PATH_FLEET).await;
    notes.extend(trouble.map(|t| format!("fleet: {t}")));
    instances.stop().await;
    bar.finish_and_clear();

    if started.is_none()
        && let Err(why) = forget(&url, &key_prefix).await
    {
        notes.push(format!(
            "could not remove the demo's keys ({key_prefix}*) from Redis: {why}; they expire by themselves"
        ));
    }
    drop(started);
    Ok(FleetDemoReport {
        instances: options.instances,
        clients,
        redis,
        notes,
        alone,
        fleet,
    })
}

/// What every run of the burst shares.
struct Burst<'a> {
    origin: &'a MockOrigin,
    clients: usize,
    bar: &'a ProgressBar,
}

impl Burst<'_> {
    /// Sends the burst for `path` over `instances` and counts what the origin
    /// saw and what the instances decided; waits until the instances have
    /// closed every client connection before returning.
    async fn run(&self, instances: &Instances, path: &'static str) -> (FleetRun, Option<String>) {
        let product = Arc::new(demo::product(path));
        let before = self.origin.hits();
        let (mut wave, trouble) = demo::burst(
            &instances.addrs(),
            path,
            self.clients,
            &product,
            self.bar,
            &|| instances.connections(),
        )
        .await;
        wave.origin_requests = self.origin.hits() - before;
        demo::settle(|| instances.connections() == 0).await;
        let (elections_won, elections_lost) = instances.elections();
        let run = FleetRun {
            path,
            wave,
            elections_won,
            elections_lost,
        };
        (run, trouble)
    }
}

/// One in-process corral instance of the demo.
struct Instance {
    addr: SocketAddr,
    connections: Gauge,
    fleet: FleetMetrics,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

/// N instances in front of the demo origin, each on its own loopback ports.
/// Dropped without [`Instances::stop`], they stop serving on their own
/// (their stop channels close).
struct Instances(Vec<Instance>);

impl Instances {
    /// Starts `count` instances in front of `origin`, caching every path for
    /// a minute; with `fleet`, each joins that fleet.
    async fn start(
        origin: &MockOrigin,
        count: usize,
        fleet: Option<FleetConfig>,
    ) -> Result<Instances, FleetDemoError> {
        let mut instances = Vec::with_capacity(count);
        for _ in 0..count {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
            let admin = TcpListener::bind(("127.0.0.1", 0)).await?;
            let addr = listener.local_addr()?;
            let mut config = Config::for_origin(
                &origin.url(),
                addr,
                admin.local_addr()?,
                Duration::from_secs(60),
            )
            .map_err(DemoError::from)?;
            if let Some(fleet) = &fleet {
                config.fleet = fleet.clone();
            }
            let corral =
                Corral::new(&config).map_err(|e| DemoError::Start(format!("corral: {e}")))?;
            let metrics = corral.proxy().metrics();
            let (connections, fleet) = (metrics.connections_open.clone(), metrics.fleet.clone());
            let (stop, stopped) = oneshot::channel::<()>();
            let server = tokio::spawn(corral.serve(listener, admin, async move {
                let _ = stopped.await;
            }));
            instances.push(Instance {
                addr,
                connections,
                fleet,
                stop,
                server,
            });
        }
        Ok(Instances(instances))
    }

    /// Waits, boundedly, until every instance reports `corral_fleet_up 1`;
    /// `Err(index)` names the first that does not.
    async fn joined(&self) -> Result<(), usize> {
        let all_up = || self.0.iter().all(|i| i.fleet.up.get() == 1);
        if demo::settle_within(JOIN_WITHIN, all_up).await {
            return Ok(());
        }
        Err(self
            .0
            .iter()
            .position(|i| i.fleet.up.get() != 1)
            .unwrap_or_default())
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.0.iter().map(|i| i.addr).collect()
    }

    /// Client connections open on all instances together.
    fn connections(&self) -> usize {
        self.0
            .iter()
            .map(|i| usize::try_from(i.connections.get()).unwrap_or(0))
            .sum()
    }

    /// Fleet elections won and lost, summed over the instances.
    fn elections(&self) -> (u64, u64) {
        self.0.iter().fold((0, 0), |(won, lost), i| {
            (
                won + i.fleet.elections_won.get(),
                lost + i.fleet.elections_lost.get(),
            )
        })
    }

    /// Stops every instance and waits until each has drained.
    async fn stop(self) {
        let mut servers = Vec::with_capacity(self.0.len());
        for instance in self.0 {
            let _ = instance.stop.send(());
            servers.push(instance.server);
        }
        for server in servers {
            let _ = server.await;
        }
    }
}

/// How far a starting `redis-server` got, as its output tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Startup {
    Starting,
    Ready,
    Exited,
}

/// A `redis-server` child process the demo started: on a free `127.0.0.1`
/// port, in a temporary directory of its own, with `--save "" --appendonly
/// no` (it persists nothing). Dropping it kills the process by its PID,
/// reaps it and removes the directory, on every path out of the demo.
pub struct RedisProcess {
    /// The port it listens on.
    port: u16,
    /// Its working directory; removed on drop.
    dir: PathBuf,
    /// The process, once spawned.
    child: Option<Child>,
    /// Its latest output lines (stdout and stderr), for error messages.
    log: Arc<Mutex<Vec<String>>>,
}

impl RedisProcess {
    /// Starts `redis-server` from `PATH` and returns once it has said it is
    /// ready and answered PING, trying another free port if the first is
    /// taken meanwhile.
    ///
    /// # Errors
    /// [`FleetDemoError::NoRedis`] when `redis-server` is not on `PATH`;
    /// [`FleetDemoError::RedisStart`] when it does not come up (its last
    /// output in the message).
    pub async fn start() -> Result<RedisProcess, FleetDemoError> {
        let mut failures = Vec::new();
        for _ in 0..REDIS_START_ATTEMPTS {
            let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
                .local_addr()?
                .port();
            let dir = std::env::temp_dir()
                .join(format!("corral-demo-redis-{}-{port}", std::process::id()));
            let mut process = RedisProcess {
                port,
                dir,
                child: None,
                log: Arc::default(),
            };
            std::fs::create_dir_all(&process.dir)?;
            match process.launch().await {
                Ok(()) => return Ok(process),
                Err(Launch::NotFound) => return Err(FleetDemoError::NoRedis),
                // Dropping `process` kills it and removes its directory.
                Err(Launch::Failed(why)) => failures.push(format!("port {port}: {why}")),
            }
        }
        Err(FleetDemoError::RedisStart(failures.join("; ")))
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis-server X.Y.Z` (or `valkey-server`), from its startup output;
    /// `redis-server` when the output did not say.
    pub fn version(&self) -> String {
        let log = self
            .log
            .lock()
            .map(|log| log.join("\n"))
            .unwrap_or_default();
        let version = |marker: &str| {
            let at = log.find(marker)? + marker.len();
            log[at..].split([',', ' ', '\n']).next().map(str::to_owned)
        };
        match (version("Valkey version="), version("Redis version=")) {
            (Some(v), _) => format!("valkey-server {v}"),
            (None, Some(v)) => format!("redis-server {v}"),
            (None, None) => "redis-server".to_owned(),
        }
    }

    /// Spawns the process and waits, boundedly, for its ready line and a PING
    /// answer; on failure the reason (with its last output) is returned and
    /// the process is left for `Drop` to kill.
    async fn launch(&mut self) -> Result<(), Launch> {
        let spawned = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Launch::NotFound);
            }
            Err(error) => return Err(Launch::Failed(format!("cannot run redis-server: {error}"))),
        };
        let (startup, mut started) = watch::channel(Startup::Starting);
        if let Some(stdout) = child.stdout.take() {
            drain(stdout, Arc::clone(&self.log), Some(startup));
        }
        if let Some(stderr) = child.stderr.take() {
            drain(stderr, Arc::clone(&self.log), None);
        }
        self.child = Some(child);
        let said = tokio::time::timeout(
            REDIS_READY_WITHIN,
            started.wait_for(|s| *s != Startup::Starting),
        )
        .await;
        let outcome = match said {
            Ok(Ok(state)) if *state == Startup::Ready => ping(&self.url()).await,
            Ok(_) => Err("it exited".to_owned()),
            Err(_) => Err(format!("not ready within {REDIS_READY_WITHIN:?}")),
        };
        outcome.map_err(|why| Launch::Failed(format!("{why}; its output: {}", self.last_output())))
    }

    fn last_output(&self) -> String {
        let log = self
            .log
            .lock()
            .map(|log| log.join(" | "))
            .unwrap_or_default();
        if log.is_empty() {
            "none".to_owned()
        } else {
            log
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL by PID (it persists nothing), then reap it; an already
            // exited child is fine.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why one launch of `redis-server` failed.
enum Launch {
    /// It is not on `PATH`.
    NotFound,
    /// It ran but did not come up.
    Failed(String),
}

/// Reads `output` line by line on a thread of its own (so the pipe never
/// fills and blocks Redis), keeping the last [`REDIS_LOG_LINES`] in `log`;
/// with `startup`, reports the ready line and the end of the output (the
/// process exited). The thread ends when the process does.
fn drain(
    output: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
    startup: Option<watch::Sender<Startup>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if line.contains(REDIS_READY_LINE)
                && let Some(startup) = &startup
            {
                startup.send_replace(Startup::Ready);
            }
            if let Ok(mut log) = log.lock() {
                if log.len() == REDIS_LOG_LINES {
                    log.remove(0);
                }
                log.push(line);
            }
        }
        if let Some(startup) = startup {
            startup.send_replace(Startup::Exited);
        }
    });
}

/// Connects to `url` and sends one PING, within [`PING_TIMEOUT`].
async fn ping(url: &str) -> Result<(), String> {
    let attempt = async {
        let mut connection = connect(url).await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(PING_TIMEOUT, attempt).await {
        Ok(Ok(pong)) if pong == "PONG" => Ok(()),
        Ok(Ok(other)) => Err(format!("PING answered {other:?}")),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
    }
}

async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PING_TIMEOUT))
        .set_response_timeout(Some(PING_TIMEOUT));
    redis::Client::open(url)
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())
}

/// Removes every key under `prefix` from the Redis at `url` (a Redis the
/// demo was given, which outlives it), within [`CLEANUP_TIMEOUT`].
async fn forget(url: &str, prefix: &str) -> Result<(), String> {
    let cleanup = async {
        let mut connection = connect(url).await?;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .map_err(|e| e.to_string())?;
            if !keys.is_empty() {
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    };
    tokio::time::timeout(CLEANUP_TIMEOUT, cleanup)
        .await
        .unwrap_or_else(|_| Err(format!("not done within {CLEANUP_TIMEOUT:?}")))
}

/// `url` without the password it may carry (`redis://user:***@host/`).
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

/// Renders the figures the way `corral demo --fleet` prints them.
pub fn render(options: &FleetDemoOptions, report: &FleetDemoReport) -> String {
    let (n, clients) = (report.instances, report.clients);
    let mut out = String::new();
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out.push_str(&format!(
        "corral demo --fleet {n}: {clients} clients ask for one product at once, spread round-robin over {n} corral instances; the origin takes {} to answer",
        demo::ms(options.demo.origin_delay)
    ));
    if options.demo.origin_limit > 0 {
        out.push_str(&format!(
            " and answers 429 beyond {} requests in flight",
            options.demo.origin_limit
        ));
    }
    out.push_str(
        "\nall connections are opened first, then every request is released at once; \
         latency runs from the release\n",
    );
    out.push_str(&format!("redis: {}\n", report.redis));

    out.push_str("\nthe same burst, on a cold product each time:\n");
    out.push_str(&format!(
        "{:<22}{:>6}{:>6}{:>17}{:>6}{:>12}{:>10}{:>10}\n",
        "", "sent", "ok", "origin requests", "429s", "from fleet", "p50", "p99"
    ));
    for (name, run) in [
        (format!("{n} instances alone"), &report.alone),
        (format!("{n} instances, fleet"), &report.fleet),
    ] {
        let wave = &run.wave;
        out.push_str(&format!(
            "{name:<22}{:>6}{:>6}{:>17}{:>6}{:>12}{:>10}{:>10}\n",
            wave.sent,
            wave.ok,
            wave.origin_requests,
            wave.rejected,
            wave.fleet,
            demo::ms(wave.p50),
            demo::ms(wave.p99)
        ));
    }

    out.push('\n');
    for (name, run) in [("alone", &report.alone), ("fleet", &report.fleet)] {
        let wave = &run.wave;
        out.push_str(&format!(
            "{name} ({}): {} ok, {} failed | origin requests: {} | served: {} miss, {} coalesced, {} hit ({} from the fleet tier) | fleet lock: {} won, {} lost | latency max {}\n",
            run.path,
            wave.ok,
            wave.failed,
            wave.origin_requests,
            wave.misses,
            wave.coalesced,
            wave.hits,
            wave.fleet,
            run.elections_won,
            run.elections_lost,
            demo::ms(wave.max)
        ));
    }
    let (alone, fleet) = (&report.alone.wave, &report.fleet.wave);
    out.push_str(&format!(
        "\nalone, each instance fetches the product for its own clients: {} origin requests; \
         as a fleet, one instance fetches it for all {n}: {} origin request(s), and {} answers came from Redis\n",
        alone.origin_requests, fleet.origin_requests, fleet.fleet
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        assert_eq!(
            redacted("redis://user:secret@cache:6379/0"),
            "redis://user:***@cache:6379/0"
        );
        assert_eq!(redacted("redis://:secret@cache"), "redis://:***@cache");
        assert_eq!(redacted("cache:6379"), "cache:6379");
    }

    #[tokio::test]
    async fn fewer_than_two_instances_are_refused_before_anything_starts() {
        let options = FleetDemoOptions {
            instances: 1,
            redis: Some("redis://127.0.0.1:1/".to_owned()),
            demo: DemoOptions::default(),
        };
        assert!(matches!(
            run(&options).await,
            Err(FleetDemoError::TooFewInstances(1))
        ));
    }

    #[test]
    fn the_table_shows_both_runs() {
        let wave = |origin_requests, fleet| WaveReport {
            sent: 10,
            ok: 10,
            origin_requests,
            fleet,
            ..WaveReport::default()
        };
        let report = FleetDemoReport {
            instances: 3,
            clients: 10,
            redis: "redis://127.0.0.1:6379/ (given)".to_owned(),
            notes: Vec::new(),
            alone: FleetRun {
                path: DEMO_PATH,
                wave: wave(3, 0),
                ..FleetRun::default()
            },
            fleet: FleetRun {
                path: DEMO_PATH_FLEET,
                wave: wave(1, 6),
                elections_won: 1,
                elections_lost: 2,
            },
        };
        let options = FleetDemoOptions {
            instances: 3,
            redis: None,
            demo: DemoOptions::default(),
        };
        let text = render(&options, &report);
        let row = |name: &str| {
            text.lines()
                .find(|line| line.starts_with(name))
                .map(|line| line.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        // name words, sent, ok, origin requests, 429s, from fleet
        assert_eq!(row("3 instances alone")[3..8], ["10", "10", "3", "0", "0"]);
        assert_eq!(row("3 instances, fleet")[3..8], ["10", "10", "1", "0", "6"]);
        assert!(text.contains("fleet lock: 1 won, 2 lost"));
    }
}
