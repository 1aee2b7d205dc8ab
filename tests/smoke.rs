//! The harness itself works: one miss then one hit through real sockets.
mod support;

use support::Setup;

use corral::testing::mock_origin::{MockOrigin, Reply};

#[tokio::test]
async fn miss_then_hit_through_real_sockets() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/p", Reply::ok("hello"));
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\nttl = \"60s\"\n")
        .start()
        .await;
    let client = support::client();

    let first = client.get(corral.url("/p")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(
        support::cache_status(&first).contains("fwd=miss"),
        "{}",
        support::cache_status(&first)
    );
    assert_eq!(first.text().await.unwrap(), "hello");

    let second = client.get(corral.url("/p")).send().await.unwrap();
    assert!(
        support::cache_status(&second).contains("hit"),
        "{}",
        support::cache_status(&second)
    );
    assert!(second.headers().contains_key("age"));
    assert_eq!(second.text().await.unwrap(), "hello");
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_and_shares_the_cache() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/p", Reply::ok("over h2"));
    let corral = Setup::origin(&origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .start()
        .await;
    let h2 = support::h2_client();

    let first = h2.get(corral.url("/p")).send().await.unwrap();
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
    assert_eq!(first.text().await.unwrap(), "over h2");
    let over_h1 = support::client()
        .get(corral.url("/p"))
        .send()
        .await
        .unwrap();
    assert_eq!(over_h1.version(), reqwest::Version::HTTP_11);
    assert!(support::cache_status(&over_h1).contains("hit"));
    assert_eq!(origin.hits(), 1);
    corral.shutdown().await;
}
