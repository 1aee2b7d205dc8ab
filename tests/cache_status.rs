//! `Cache-Status` accuracy (RFC 9211): corral's member is one member, with
//! one `detail` at most, and it comes after any members the origin (or a
//! cache in front of it) sent.
mod support;

use corral::testing::mock_origin::{Behaviour, MockOrigin, Reply};
use support::Setup;

#[tokio::test]
async fn a_failing_pass_names_its_failure_as_the_one_detail() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/cart", Behaviour::Reset);
    let corral = Setup::origin(&origin)
        .origin_keys("retries = 0")
        .toml("[[route]]\nmatch = \"/cart\"\ncache = false\n")
        .start()
        .await;
    let seen = support::get(&support::client(), &corral.url("/cart")).await;
    assert_eq!(seen.status, 502, "{seen:?}");
    assert_eq!(seen.cache_status.matches("detail=").count(), 1, "{seen:?}");
    assert!(
        seen.cache_status.starts_with("corral; fwd=bypass; detail="),
        "{seen:?}"
    );
    corral.shutdown().await;
}

#[tokio::test]
async fn corrals_member_follows_the_origins_on_misses_and_hits() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always(
        "/p",
        Reply::ok("p")
            .header("cache-control", "max-age=60")
            .header("cache-status", "origin-cdn; hit"),
    );
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    let miss = support::get(&client, &corral.url("/p")).await;
    assert_eq!(
        miss.cache_status,
        "origin-cdn; hit, corral; fwd=miss; fwd-status=200; stored"
    );
    let hit = support::get(&client, &corral.url("/p")).await;
    assert!(
        hit.cache_status
            .starts_with("origin-cdn; hit, corral; hit; ttl="),
        "{hit:?}"
    );
    assert_eq!(hit.headers.get_all("cache-status").iter().count(), 1);
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_answer_served_stale_for_the_clients_max_stale_says_so() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/s", Reply::ok("s").header("cache-control", "max-age=10"));
    let corral = Setup::origin(&origin)
        .toml("[server]\nidle_timeout = \"1h\"\n[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let client = support::client();
    let url = corral.url("/s");
    support::get(&client, &url).await;
    tokio::time::advance(std::time::Duration::from_secs(15)).await;
    let seen = support::get_with(&client, &url, &[("cache-control", "max-stale=60")]).await;
    assert_eq!(seen.text(), "s");
    assert_eq!(seen.cache_status, "corral; hit; detail=stale-max-stale");
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}
