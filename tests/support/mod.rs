//! Shared harness for integration tests: corral configured with [`Setup`] and
//! started in-process on ephemeral loopback ports in front of a
//! [`MockOrigin`] (or any origin URL), and a plain client.
#![allow(dead_code)]

pub mod raw_client;
pub mod raw_origin;
pub mod redis;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral::Corral;
use corral::config::Config;
use corral::proxy::Proxy;
use corral::testing::mock_origin::MockOrigin;
use tokio::net::TcpListener;
use tokio::sync::{Barrier, oneshot};
use tokio::task::JoinHandle;

/// A corral instance serving on `127.0.0.1:0`.
pub struct TestProxy {
    /// Where proxied traffic goes.
    pub addr: SocketAddr,
    /// Where the admin endpoints are.
    pub admin: SocketAddr,
    /// The running proxy (its cache, metrics, flight map).
    pub proxy: Proxy,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestProxy {
    /// `http://ADDR{path}` on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `https://127.0.0.1:PORT{path}` on the proxy listener, for a corral
    /// that terminates TLS (its certificate must name `127.0.0.1`).
    pub fn https_url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    /// `http://ADMIN{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("admin answers")
            .text()
            .await
            .expect("metrics body")
    }

    /// `POST /reload` on the admin listener: the status and the JSON answer.
    pub async fn reload(&self) -> (reqwest::StatusCode, String) {
        let response = client()
            .post(self.admin_url("/reload"))
            .send()
            .await
            .expect("admin answers");
        let status = response.status();
        (status, response.text().await.expect("reload answer"))
    }

    /// Signals shutdown and waits until both listeners have drained.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("corral task panicked");
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The one way tests configure corral: the origin it fronts, extra keys for
/// the `[origin]` table, and the rest of the TOML.
///
/// ```ignore
/// let corral = Setup::origin(&origin)
///     .origin_keys("timeout = \"300ms\"\nretries = 0")
///     .toml("[[route]]\nmatch = \"/\"\nttl = \"60s\"")
///     .start()
///     .await;
/// ```
///
/// The text it parses is `[origin]`, `url = "…"`, every `origin_keys` chunk,
/// then every `toml` chunk, each on lines of its own; so `toml` may open any
/// table, including `[server]`. Listen addresses in it are ignored by
/// [`Setup::start`], which binds ephemeral loopback ports.
#[derive(Clone, Debug)]
#[must_use = "a Setup does nothing until .config(), .text() or .start()"]
pub struct Setup {
    url: String,
    origin_keys: String,
    toml: String,
}

impl Setup {
    /// Corral in front of `origin` (its `url()`).
    pub fn origin(origin: &MockOrigin) -> Setup {
        Setup::url(origin.url())
    }

    /// Corral in front of the origin at `url`, for origins other than
    /// [`MockOrigin`] (a raw TCP listener a test scripts byte by byte).
    pub fn url(url: impl Into<String>) -> Setup {
        Setup {
            url: url.into(),
            origin_keys: String::new(),
            toml: String::new(),
        }
    }

    /// Adds `keys` (TOML lines such as `timeout = "300ms"`) to the `[origin]`
    /// table. Each call adds to what earlier calls gave.
    pub fn origin_keys(mut self, keys: &str) -> Setup {
        push_lines(&mut self.origin_keys, keys);
        self
    }

    /// Adds `toml` (tables such as `[server]` and `[[route]]`) after the
    /// `[origin]` table. Each call adds to what earlier calls gave.
    pub fn toml(mut self, toml: &str) -> Setup {
        push_lines(&mut self.toml, toml);
        self
    }

    /// The whole config text, as a config file would hold it.
    pub fn text(&self) -> String {
        format!(
            "[origin]\nurl = \"{}\"\n{}{}",
            self.url, self.origin_keys, self.toml
        )
    }

    /// The parsed config; panics if it is not valid.
    pub fn config(&self) -> Config {
        Config::parse(&self.text(), Path::new("test.toml")).expect("test config is valid")
    }

    /// Starts corral with this config on ephemeral loopback ports (listen
    /// addresses in the config are ignored).
    pub async fn start(&self) -> TestProxy {
        serve(Corral::new(&self.config()).expect("corral builds")).await
    }
}

/// Serves `corral` (built by the caller, e.g. with a shared tier or from the
/// quick start's config) on ephemeral loopback ports.
pub async fn serve(corral: Corral) -> TestProxy {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind proxy");
    let admin = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind admin");
    let addr = listener.local_addr().expect("proxy addr");
    let admin_addr = admin.local_addr().expect("admin addr");
    let proxy = corral.proxy().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(corral.serve(listener, admin, async move {
        let _ = stopped.await;
    }));
    TestProxy {
        addr,
        admin: admin_addr,
        proxy,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Appends `lines` to `text`, ending them with a newline.
fn push_lines(text: &mut String, lines: &str) {
    text.push_str(lines);
    if !lines.is_empty() && !lines.ends_with('\n') {
        text.push('\n');
    }
}

/// A client that never uses a proxy from the environment and keeps up to
/// 1,024 idle connections, so bursts open one connection per request.
pub fn client() -> reqwest::Client {
    // reqwest takes its TLS crypto from the process default, and panics
    // without one; corral installs it when it starts, which may be later.
    corral::tls::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("client builds")
}

/// A client speaking HTTP/2 with prior knowledge (h2c), as corral's listener
/// accepts it.
pub fn h2_client() -> reqwest::Client {
    corral::tls::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("h2 client builds")
}

/// The `Cache-Status` header of a response, or "".
pub fn cache_status(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Waits until `condition` (a gauge or counter of the system under test)
/// holds, checking it again each time the runtime has run the other tasks;
/// panics naming `what` if it still does not hold after `within`. It never
/// sleeps: the wait ends as soon as the counter moves.
///
/// `within` is measured on the real clock, so it bounds the wait on a paused
/// tokio clock too. There, time stands still while this waits (a task is
/// always ready, so tokio never auto-advances): a condition that needs one of
/// corral's timers to fire must follow a `tokio::time::advance`.
pub async fn wait_until(
    what: &str,
    within: std::time::Duration,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::task::yield_now().await;
    }
}

/// Opens a raw connection to `addr` and writes one HTTP/1.1 request head
/// (`method path`, `Host`, then `extra_headers`, each a full `Name: value` line).
/// The caller reads the answer, or drops the stream to disconnect mid-request.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &[&str],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to proxy");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for header in extra_headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write request head");
    stream
}

/// What one client saw: status, `Cache-Status`, headers, and the body or why
/// it broke.
#[derive(Debug)]
pub struct Seen {
    /// Response status.
    pub status: reqwest::StatusCode,
    /// The `Cache-Status` header, or "".
    pub cache_status: String,
    /// Every response header.
    pub headers: reqwest::header::HeaderMap,
    /// The whole body, or the error that cut it short.
    pub body: Result<String, String>,
}

impl Seen {
    /// The body, which the caller expects to have arrived whole.
    pub fn text(&self) -> &str {
        match &self.body {
            Ok(body) => body,
            Err(error) => panic!("body did not arrive whole: {error}"),
        }
    }

    /// The value of header `name`, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Retry-After` header.
    pub fn retry_after(&self) -> Option<&str> {
        self.header("retry-after")
    }

    /// The `Set-Cookie` header.
    pub fn set_cookie(&self) -> Option<&str> {
        self.header("set-cookie")
    }

    /// The `Age` header, which the caller expects.
    pub fn age(&self) -> u64 {
        self.header("age")
            .and_then(|age| age.parse().ok())
            .unwrap_or_else(|| panic!("no Age: {self:?}"))
    }

    /// The `ttl` parameter of `Cache-Status`, which the caller expects.
    pub fn ttl(&self) -> u64 {
        ttl_of(&self.cache_status)
    }
}

/// The `ttl` parameter of a `Cache-Status` value; panics if it has none.
pub fn ttl_of(cache_status: &str) -> u64 {
    cache_status
        .split(';')
        .find_map(|p| p.trim().strip_prefix("ttl="))
        .and_then(|ttl| ttl.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {cache_status:?}"))
}

/// Longest any single test request may take before the test fails.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Records what came back for `response`.
pub async fn seen(response: reqwest::Response) -> Seen {
    let status = response.status();
    let cache_status = cache_status(&response);
    let headers = response.headers().clone();
    let body = response.text().await.map_err(|e| format!("{e:?}"));
    Seen {
        status,
        cache_status,
        headers,
        body,
    }
}

/// Sends `request` (bounded by [`REQUEST_TIMEOUT`]) and records what came back.
pub async fn send(request: reqwest::RequestBuilder) -> Seen {
    let response = request
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .expect("request reaches corral");
    seen(response).await
}

/// One GET through `client` whose response may break before its head is
/// complete (a body streamed as it arrives fails however far it got): the
/// error that stopped it, else what came back.
pub async fn try_get(client: &reqwest::Client, url: &str) -> Result<Seen, String> {
    let response = client
        .get(url)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|error| format!("{error:?}"))?;
    Ok(seen(response).await)
}

/// One GET through `client`.
pub async fn get(client: &reqwest::Client, url: &str) -> Seen {
    send(client.get(url)).await
}

/// One GET through `client` with extra request headers.
pub async fn get_with(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Seen {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request).await
}

/// [`get`] on its own task.
pub fn spawn_get(client: &reqwest::Client, url: &str) -> tokio::task::JoinHandle<Seen> {
    let client = client.clone();
    let url = url.to_owned();
    tokio::spawn(async move { get(&client, &url).await })
}

/// Awaits every client task, in order.
pub async fn join_all(handles: Vec<tokio::task::JoinHandle<Seen>>) -> Vec<Seen> {
    let mut all = Vec::with_capacity(handles.len());
    for handle in handles {
        all.push(handle.await.expect("client task panicked"));
    }
    all
}

/// Spawns `count` GETs of `url` that all wait on one barrier, and releases
/// them together; the caller awaits the handles (see [`join_all`]).
pub async fn burst(client: &reqwest::Client, url: &str, count: usize) -> Vec<JoinHandle<Seen>> {
    let barrier = Arc::new(Barrier::new(count + 1));
    let handles = (0..count)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let client = client.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                barrier.wait().await;
                get(&client, &url).await
            })
        })
        .collect();
    barrier.wait().await;
    handles
}

/// A directory of its own under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory whose name starts with `corral-{name}`.
    pub fn new(name: &str) -> TempDir {
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("corral-{name}-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Writes `text` to `file` in the directory (replacing it) and returns its path.
    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.path(file);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    /// The path of `file` in the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
