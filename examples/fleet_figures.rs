//! Figures for the fleet, measured in one run against a Redis the caller
//! started (`fleet_figures redis://127.0.0.1:PORT/`); every loop is bounded.
//!
//! 1. L2 hit latency: instance A fills `KEYS` distinct 1 KiB objects; instance
//!    B (cold in-process cache) then asks for each once, one at a time, so
//!    every answer is a fleet hit (checked: `detail=fleet`). Prints the
//!    client-side p50/p99 of those requests and corral's own Redis GET round
//!    trips (`corral_fleet_redis_duration_seconds{op="get"}`): compare them
//!    with `redis-benchmark -t get -d 1100 -c 1` against the same Redis.
//! 2. Redis commands per miss per instance: two instances, `waiters` clients
//!    on each for one cold key (origin 50 ms), with 10 and with 1,000 waiters;
//!    `INFO commandstats` is reset before and read after each burst.

use std::process::ExitCode;
use std::time::Duration;

use corral::Corral;
use corral::config::Config;
use corral::testing::mock_origin::{MockOrigin, Reply};
use tokio::net::TcpListener;
use tokio::time::Instant;

const KEYS: usize = 1_000;

async fn instance(origin: &MockOrigin, redis: &str) -> Result<String, String> {
    let text = format!(
        "[origin]\nurl = \"{}\"\n[log]\naccess_log = false\n[[route]]\nmatch = \"/\"\nttl = \"300s\"\nlock_timeout = \"30s\"\n[fleet]\nredis = \"{redis}\"\nlookup_timeout = \"1s\"\n",
        origin.url()
    );
    let config =
        Config::parse(&text, std::path::Path::new("figures.toml")).map_err(|e| e.to_string())?;
    let corral = Corral::new(&config).map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let admin = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(corral.serve(listener, admin, std::future::pending()));
    Ok(format!("http://{addr}"))
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

async fn commandstats(redis: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .filter(|(name, _)| {
            let command = name.split('|').next().unwrap_or(name);
            !matches!(command, "info" | "config" | "ping" | "hello" | "client")
        })
        .collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(redis_url) = std::env::args().nth(1) else {
        eprintln!("usage: fleet_figures redis://127.0.0.1:PORT/");
        return ExitCode::from(2);
    };
    match run(&redis_url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fleet_figures: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(redis_url: &str) -> Result<(), String> {
    let origin = MockOrigin::start().await.map_err(|e| e.to_string())?;
    let body = "x".repeat(1024);
    origin.always(
        "/obj/",
        Reply::ok(body.clone()).header("cache-control", "max-age=300"),
    );
    origin.always(
        "/cold/",
        Reply::ok(body.clone())
            .header("cache-control", "max-age=300")
            .delay(Duration::from_millis(50)),
    );
    let a = instance(&origin, redis_url).await?;
    let b = instance(&origin, redis_url).await?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    // Both instances in fleet mode before measuring (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    for base in [&a, &b] {
        loop {
            let answered = client.get(format!("{base}/warmup")).send().await.is_ok();
            if answered || Instant::now() > deadline {
                break;
            }
        }
    }

    for i in 0..KEYS {
        client
            .get(format!("{a}/obj/{i}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut latencies = Vec::with_capacity(KEYS);
    let mut fleet_hits = 0;
    for i in 0..KEYS {
        let started = Instant::now();
        let response = client
            .get(format!("{b}/obj/{i}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let from_fleet = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("detail=fleet"));
        let _ = response.bytes().await;
        latencies.push(started.elapsed());
        fleet_hits += usize::from(from_fleet);
    }
    latencies.sort();
    println!(
        "L2 hit through corral (client side, {fleet_hits}/{KEYS} from the fleet tier): p50 {:?}, p99 {:?}",
        percentile(&latencies, 50),
        percentile(&latencies, 99)
    );
    let mut local = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let started = Instant::now();
        let response = client
            .get(format!("{b}/obj/{i}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let _ = response.bytes().await;
        local.push(started.elapsed());
    }
    local.sort();
    println!(
        "the same requests again, now L1 hits: p50 {:?}, p99 {:?}",
        percentile(&local, 50),
        percentile(&local, 99)
    );

    let mut redis = redis::Client::open(redis_url)
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    for (round, waiters) in [10usize, 1_000].into_iter().enumerate() {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        let before = origin.hits();
        let path = format!("/cold/{round}");
        let mut tasks = Vec::new();
        for base in [&a, &b] {
            for _ in 0..waiters {
                let (client, url) = (client.clone(), format!("{base}{path}"));
                tasks.push(tokio::spawn(async move {
                    client.get(url).send().await.map(|r| r.status())
                }));
            }
        }
        let mut ok = 0;
        for task in tasks {
            if matches!(task.await, Ok(Ok(status)) if status.is_success()) {
                ok += 1;
            }
        }
        let stats = commandstats(&mut redis).await;
        let total: u64 = stats.iter().map(|(_, calls)| calls).sum();
        println!(
            "{waiters} waiters on each of 2 instances: {ok} answered, {} origin request(s), {total} Redis commands = {:.1} per instance per miss ({})",
            origin.hits() - before,
            total as f64 / 2.0,
            stats
                .iter()
                .map(|(name, calls)| format!("{name}={calls}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}
