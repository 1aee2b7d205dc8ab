//! `corral demo --fleet N` (issue 10): the burst spread over N instances
//! makes N origin requests when they are alone and one when they share a
//! Redis; without Redis the command says how to get one; the `redis-server`
//! it starts is gone when it is done.
//!
//! Like `tests/fleet.rs`, these need `redis-server` on `PATH` (`.ci/run`
//! installs it), except the one that hides it.

use std::process::Command;
use std::time::Duration;

use corral::testing::demo::DemoOptions;
use corral::testing::fleet_demo::{self, FleetDemoOptions, RedisProcess};

/// A small burst: quick, and still every client arrives within the origin's
/// answer time, so each instance coalesces all of its own clients.
fn options(instances: usize) -> FleetDemoOptions {
    FleetDemoOptions {
        instances,
        redis: None,
        demo: DemoOptions {
            clients: 150,
            origin_delay: Duration::from_millis(300),
            origin_limit: 100,
            progress: false,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_demo_makes_one_origin_request_where_lone_instances_make_one_each() {
    let report = fleet_demo::run(&options(3))
        .await
        .unwrap_or_else(|e| panic!("the fleet demo failed (is redis-server on PATH?): {e}"));
    let (alone, fleet) = (&report.alone, &report.fleet);
    assert_eq!(report.clients, 150);
    for run in [alone, fleet] {
        assert_eq!(run.wave.sent, 150, "{run:?}");
        assert_eq!(run.wave.ok, 150, "every client gets the product: {run:?}");
        assert_eq!(run.wave.rejected, 0, "{run:?}");
    }
    assert_ne!(alone.path, fleet.path, "each run asks for a cold product");

    assert_eq!(alone.wave.origin_requests, 3, "one per lone instance");
    assert_eq!(alone.wave.misses, 3);
    assert_eq!(alone.wave.fleet, 0, "no fleet tier, no fleet answers");
    assert_eq!((alone.elections_won, alone.elections_lost), (0, 0));

    assert_eq!(fleet.wave.origin_requests, 1, "one for the whole fleet");
    assert_eq!(fleet.wave.misses, 1, "{fleet:?}");
    assert_eq!(fleet.elections_won, 1, "{fleet:?}");
    assert!(fleet.elections_lost <= 2, "{fleet:?}");
    assert!(
        fleet.wave.fleet >= 1 && fleet.wave.fleet <= 100,
        "the other instances' clients are answered from Redis: {fleet:?}"
    );

    let text = fleet_demo::render(&options(3), &report);
    assert!(text.contains("3 instances alone"), "{text}");
    assert!(text.contains("3 instances, fleet"), "{text}");
}

#[test]
fn fleet_demo_without_redis_says_how_to_get_it() {
    let empty = std::env::temp_dir().join(format!("corral-no-redis-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("create an empty PATH directory");
    let output = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["demo", "--fleet", "3", "--no-progress"])
        .env("PATH", &empty)
        .output()
        .expect("run corral demo --fleet");
    let _ = std::fs::remove_dir_all(&empty);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "no Redis must be an error; stderr: {stderr}"
    );
    assert_eq!(
        stderr.trim_end(),
        "corral demo --fleet needs Redis: install redis-server (apt-get install redis-server) \
         or pass --redis redis://host:port/"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing is measured without Redis"
    );
}

#[tokio::test]
async fn the_demos_redis_server_answers_while_held_and_is_gone_once_dropped() {
    let redis = RedisProcess::start()
        .await
        .unwrap_or_else(|e| panic!("redis-server did not start (is it on PATH?): {e}"));
    let url = redis.url();
    let client = redis::Client::open(url.as_str()).expect("a redis:// URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("it accepts connections");
    let pong: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .expect("it answers PING");
    assert_eq!(pong, "PONG");
    // The binary is always `redis-server`, which .ci/run installs; only its
    // banner differs where Debian's valkey-redis-compat provides that name.
    assert!(redis.version().starts_with("redis-server") || redis.version().starts_with("valkey"));

    drop(redis);
    // Dropping it killed and reaped the process: nothing listens any more.
    let refused = std::net::TcpStream::connect(url_addr(&url));
    assert!(refused.is_err(), "{url} still accepts connections");
}

fn url_addr(url: &str) -> String {
    url.trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned()
}
