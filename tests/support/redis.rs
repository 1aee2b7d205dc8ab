//! A real `redis-server` for the fleet tests: one process per test, on a
//! free loopback port, in a temporary directory of its own, persisting
//! nothing, stopped by PID when dropped.
//!
//! The process is found on `PATH` (CI installs the Debian package). A test
//! kills it with SIGKILL ([`RedisServer::kill`]) and brings it back on the
//! same port ([`RedisServer::restart`]) to play an outage, and talks to it
//! through the `redis` crate to look at (or tamper with) what corral wrote.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

/// How long a starting `redis-server` may take to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Longest a helper command waits for its reply. Generous, because a write
/// issued under `CLIENT PAUSE ... WRITE` blocks until the pause ends.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports tried before [`RedisServer::start`] gives up (another process may
/// take a free port between the probe and redis binding it).
const START_ATTEMPTS: usize = 5;

/// A `redis-server` child process on `127.0.0.1`.
pub struct RedisServer {
    /// The port it listens on, the same across restarts.
    port: u16,
    /// Its working directory and log (`redis.log`); removed on drop.
    dir: PathBuf,
    /// The running process; `None` between [`kill`](Self::kill) and
    /// [`restart`](Self::restart).
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it
    /// answers PING.
    ///
    /// # Panics
    /// When `redis-server` is not on `PATH`, or no attempt comes up.
    pub async fn start() -> RedisServer {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("corral-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            let mut server = RedisServer {
                port,
                dir,
                child: None,
            };
            match server.launch().await {
                Ok(()) => return server,
                // Dropping `server` removes its directory.
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        panic!(
            "redis-server did not come up in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (no shutdown, no goodbye to its clients)
    /// and reaps it. Nothing happens if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL by PID; an already exited child is fine.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill))
    /// and waits until it answers PING. It comes back empty: nothing persists.
    ///
    /// # Panics
    /// When it does not come up (its log is in the message).
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.launch().await {
            panic!("redis-server did not restart on port {}: {why}", self.port);
        }
    }

    /// A new connection of its own (so a command blocked on it blocks
    /// nothing else), whose commands wait up to ten seconds for a reply.
    ///
    /// # Panics
    /// When the server cannot be reached.
    pub async fn connection(&self) -> MultiplexedConnection {
        self.try_connection()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to redis at {}: {e}", self.url()))
    }

    /// Runs one command (`args[0]` is its name) on a fresh connection.
    ///
    /// # Panics
    /// When the server cannot be reached or answers an error.
    pub async fn cmd(&self, args: &[&str]) -> Value {
        self.query(args).await
    }

    /// Runs one command on a fresh connection and converts its reply to `T`.
    ///
    /// # Panics
    /// When the server cannot be reached, answers an error, or the reply is
    /// not a `T`.
    pub async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut connection = self.connection().await;
        let (name, rest) = args.split_first().expect("a command has a name");
        redis::cmd(name)
            .arg(rest)
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("redis {args:?} failed: {e}"))
    }

    /// Every key matching `pattern` (a `SCAN MATCH` glob), sorted.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut connection = self.connection().await;
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .unwrap_or_else(|e| panic!("SCAN {pattern} failed: {e}"));
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// The value under `key`, or `None` when there is none.
    pub async fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        let mut connection = self.connection().await;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("GET {key} failed: {e}"))
    }

    /// Replaces the value under `key` with `bytes`, keeping its TTL.
    pub async fn set_raw(&self, key: &str, bytes: &[u8]) {
        let mut connection = self.connection().await;
        let () = redis::cmd("SET")
            .arg(key)
            .arg(bytes)
            .arg("KEEPTTL")
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("SET {key} failed: {e}"));
    }

    /// `CLIENT PAUSE ms WRITE`: for `ms` milliseconds every client that sends
    /// a write blocks (reads go on). Returns once the pause is in force.
    pub async fn client_pause_write(&self, ms: u64) {
        let ms = ms.to_string();
        let () = self.query(&["CLIENT", "PAUSE", &ms, "WRITE"]).await;
    }

    /// `CLIENT KILL TYPE pubsub`: drops every connection in pub/sub mode
    /// (messages published meanwhile are lost to them). Returns how many.
    pub async fn kill_pubsub_clients(&self) -> u64 {
        self.query(&["CLIENT", "KILL", "TYPE", "pubsub"]).await
    }

    /// Connections subscribed to `channel` (`PUBSUB NUMSUB`).
    pub async fn subscribers(&self, channel: &str) -> u64 {
        let (_, count): (String, u64) = self.query(&["PUBSUB", "NUMSUB", channel]).await;
        count
    }

    /// Channels with at least one subscriber matching `pattern` (`PUBSUB CHANNELS`).
    pub async fn channels(&self, pattern: &str) -> Vec<String> {
        self.query(&["PUBSUB", "CHANNELS", pattern]).await
    }

    /// Patterns subscribed to by anyone (`PUBSUB NUMPAT`).
    pub async fn pattern_subscriptions(&self) -> u64 {
        self.query(&["PUBSUB", "NUMPAT"]).await
    }

    /// `INFO commandstats`: calls per command since start.
    pub async fn commandstats(&self) -> String {
        self.query(&["INFO", "commandstats"]).await
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    async fn try_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Spawns the process on `self.port` and waits until it answers PING;
    /// on failure it is killed again and the reason (with its log) returned.
    async fn launch(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open the log: {e}"))?;
        let stderr = log
            .try_clone()
            .map_err(|e| format!("cannot share the log: {e}"))?;
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server (is it on PATH?): {e}"));
        self.child = Some(child);
        match self.wait_ready().await {
            Ok(()) => Ok(()),
            Err(why) => {
                self.kill();
                Err(format!("{why}\n--- redis.log ---\n{}", self.log()))
            }
        }
    }

    /// Connects and PINGs until the answer comes, the process exits, or
    /// [`READY_WITHIN`] passes.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("redis-server exited with {status}"));
            }
            let last_error = match self.ping().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "no PONG within {READY_WITHIN:?}; last error: {last_error}"
                ));
            }
            // Checked again once the runtime has run everything else; a
            // refused connect returns at once, so this never sleeps.
            tokio::task::yield_now().await;
        }
    }

    async fn ping(&self) -> Result<(), String> {
        let mut connection = self.try_connection().await.map_err(|e| e.to_string())?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(format!("PING answered {pong:?}"))
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on right now: bound, read, released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind a free loopback port")
}
