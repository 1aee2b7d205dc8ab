//! `corral demo`: the flash sale, on loopback, with nothing else installed.
//!
//! Starts an in-process origin that answers after 120 ms, starts corral in
//! front of it, fires a burst of concurrent GETs for one cold key, then a second
//! wave on the now warm cache, and reports what the origin saw and the latency
//! each wave's clients saw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::Corral;
use crate::config::{Config, ConfigError};
use crate::testing::mock_origin::{MockOrigin, Reply};

/// The product every demo client asks for.
pub const DEMO_PATH: &str = "/api/products/42";

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Concurrent clients in each wave.
    pub clients: usize,
    /// How long the origin takes to answer.
    pub origin_delay: Duration,
    /// Whether to draw a progress bar on the terminal.
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            clients: 800,
            origin_delay: Duration::from_millis(120),
            progress: true,
        }
    }
}

/// Figures for one wave of concurrent requests.
#[derive(Debug, Clone)]
pub struct WaveReport {
    /// Requests sent.
    pub sent: usize,
    /// Requests answered 200 with the product body.
    pub ok: usize,
    /// Requests that failed or got anything else.
    pub failed: usize,
    /// Origin requests made during the wave.
    pub origin_requests: u64,
    /// How the answers were served, from their `Cache-Status` headers.
    pub hits: usize,
    /// Answers that were this wave's single origin fetch.
    pub misses: usize,
    /// Answers that waited on another request's fetch.
    pub coalesced: usize,
    /// Latency percentiles and maximum as seen by the clients.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Slowest request.
    pub max: Duration,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A loopback listener could not be bound.
    #[error("cannot bind a loopback listener: {0}")]
    Bind(#[from] std::io::Error),
    /// The generated configuration was refused (a bug).
    #[error("demo configuration refused: {0}")]
    Config(#[from] ConfigError),
    /// corral or its client could not be built.
    #[error("cannot start: {0}")]
    Start(String),
}

/// Runs both waves and returns their figures.
///
/// # Errors
/// [`DemoError`] when the loopback origin, proxy or client cannot start.
pub async fn run(options: &DemoOptions) -> Result<[WaveReport; 2], DemoError> {
    let origin = MockOrigin::start().await?;
    let product = format!(
        "{{\"id\":42,\"name\":\"Limited edition sneaker\",\"price\":129.0,\"stock\":800,\"pad\":\"{}\"}}",
        "x".repeat(512)
    );
    origin.always(
        "/api/products/",
        Reply::ok(product.clone())
            .header("content-type", "application/json")
            .delay(options.origin_delay),
    );

    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let admin = TcpListener::bind(("127.0.0.1", 0)).await?;
    let proxy_addr = listener.local_addr()?;
    let config = Config::for_origin(
        &origin.url(),
        proxy_addr,
        admin.local_addr()?,
        Duration::from_secs(60),
    )?;
    let corral = Corral::new(&config).map_err(|e| DemoError::Start(e.to_string()))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(corral.serve(listener, admin, async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.clients)
        .no_proxy()
        .build()
        .map_err(|e| DemoError::Start(e.to_string()))?;
    let bar = progress_bar(options);
    let url = format!("http://{proxy_addr}{DEMO_PATH}");
    let product = Arc::new(product);
    let mut waves = Vec::with_capacity(2);
    for wave in ["cold", "warm"] {
        bar.set_message(format!("{wave} wave"));
        let before = origin.hits();
        let mut report = fire_wave(&client, &url, options.clients, &bar, &product).await;
        report.origin_requests = origin.hits() - before;
        waves.push(report);
    }
    bar.finish_and_clear();
    let _ = stop.send(());
    let _ = server.await;
    let [cold, warm]: [WaveReport; 2] = waves
        .try_into()
        .map_err(|_| DemoError::Start("wave count".into()))?;
    Ok([cold, warm])
}

fn progress_bar(options: &DemoOptions) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(2 * options.clients as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg:>10} [{bar:40}] {pos}/{len} responses")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

struct Outcome {
    latency: Duration,
    ok: bool,
    cache_status: String,
}

/// Fires `clients` GETs at once (all released by one signal) and gathers figures.
async fn fire_wave(
    client: &reqwest::Client,
    url: &str,
    clients: usize,
    bar: &ProgressBar,
    product: &Arc<String>,
) -> WaveReport {
    let (go, ready) = watch::channel(false);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = client.clone();
        let url = url.to_owned();
        let mut ready = ready.clone();
        let bar = bar.clone();
        let product = Arc::clone(product);
        tasks.push(tokio::spawn(async move {
            let _ = ready.wait_for(|go| *go).await;
            let started = Instant::now();
            let outcome = match client.get(&url).send().await {
                Ok(response) => {
                    let ok = response.status() == reqwest::StatusCode::OK;
                    let cache_status = response
                        .headers()
                        .get("cache-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let body_ok = response.text().await.is_ok_and(|body| body == *product);
                    Outcome {
                        latency: started.elapsed(),
                        ok: ok && body_ok,
                        cache_status,
                    }
                }
                Err(_) => Outcome {
                    latency: started.elapsed(),
                    ok: false,
                    cache_status: String::new(),
                },
            };
            bar.inc(1);
            outcome
        }));
    }
    let _ = go.send(true);
    let mut outcomes = Vec::with_capacity(clients);
    for task in tasks {
        if let Ok(outcome) = task.await {
            outcomes.push(outcome);
        }
    }
    summarise(clients, &outcomes)
}

fn summarise(sent: usize, outcomes: &[Outcome]) -> WaveReport {
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    latencies.sort_unstable();
    let ok = outcomes.iter().filter(|o| o.ok).count();
    let count = |needle: &str| {
        outcomes
            .iter()
            .filter(|o| o.cache_status.contains(needle))
            .count()
    };
    WaveReport {
        sent,
        ok,
        failed: sent - ok,
        origin_requests: 0,
        hits: count("; hit"),
        misses: outcomes
            .iter()
            .filter(|o| {
                o.cache_status.contains("fwd=miss") && !o.cache_status.contains("collapsed")
            })
            .count(),
        coalesced: count("collapsed"),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Renders the figures the way `corral demo` prints them.
pub fn render(
    options: &DemoOptions,
    waves: &[WaveReport; 2],
    proxy_note: Option<SocketAddr>,
) -> String {
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let mut out = format!(
        "corral demo: {} clients ask for {DEMO_PATH} at once; the origin takes {} to answer\n",
        options.clients,
        ms(options.origin_delay)
    );
    if let Some(addr) = proxy_note {
        out.push_str(&format!("corral listened on {addr}\n"));
    }
    for (name, wave) in ["wave 1 (cold key)", "wave 2 (warm key)"].iter().zip(waves) {
        out.push_str(&format!(
            "{name}: sent {} requests, {} ok, {} failed | origin requests: {} | served: {} miss, {} coalesced, {} hit | latency p50 {}, p99 {}, max {}\n",
            wave.sent, wave.ok, wave.failed, wave.origin_requests, wave.misses, wave.coalesced, wave.hits,
            ms(wave.p50), ms(wave.p99), ms(wave.max)
        ));
    }
    let total_sent: usize = waves.iter().map(|w| w.sent).sum();
    let total_origin: u64 = waves.iter().map(|w| w.origin_requests).sum();
    out.push_str(&format!(
        "total: {total_sent} requests sent, {total_origin} origin request(s) made\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
