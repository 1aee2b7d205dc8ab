//! The harness itself works: one miss then one hit through real sockets.
mod support;

use corral::mock_origin::{MockOrigin, Reply};

#[tokio::test]
async fn miss_then_hit_through_real_sockets() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/p", Reply::ok("hello"));
    let corral = support::start(support::config(
        &origin,
        "[[route]]\nmatch = \"/\"\nttl = \"60s\"\n",
    ))
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
