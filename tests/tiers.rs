//! The tier seam: two corral instances whose shared tier is one in-process
//! cache stand in for a fleet sharing an L2. What one instance stores, the
//! other serves without the origin; what may not be shared never reaches the
//! shared tier. The request path is the same with or without the tier.
mod support;

use support::Setup;

use std::sync::Arc;

use corral::Corral;
use corral::cache::{HotCache, Tier};
use corral::testing::mock_origin::{MockOrigin, Reply};
use tokio::net::TcpListener;

/// A corral instance on ephemeral ports in front of `origin`, with `shared`
/// as its tier beyond the process. Returns its proxy address.
async fn instance(origin: &MockOrigin, shared: Arc<dyn Tier>) -> std::net::SocketAddr {
    let config = Setup::origin(origin)
        .toml("[[route]]\nmatch = \"/\"\n")
        .config();
    let corral = Corral::with_shared_tier(&config, Some(shared)).expect("corral builds");
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let admin = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind admin");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(corral.serve(listener, admin, std::future::pending()));
    addr
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("corral answers");
    let status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn what_one_instance_stores_another_serves_from_the_shared_tier() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always(
        "/product",
        Reply::ok("the product").header("cache-control", "max-age=60"),
    );
    let shared: Arc<dyn Tier> = Arc::new(HotCache::new(1 << 20, 8, || {}));
    let a = instance(&origin, Arc::clone(&shared)).await;
    let b = instance(&origin, Arc::clone(&shared)).await;

    let (status, body) = get(a, "/product").await;
    assert!(status.contains("fwd=miss"), "{status}");
    assert_eq!(body, "the product");
    let (status, body) = get(b, "/product").await;
    assert!(
        status.contains("; hit"),
        "B answers from the shared tier: {status}"
    );
    assert_eq!(body, "the product");
    let (status, _) = get(b, "/product").await;
    assert!(status.contains("; hit"), "and then from its own: {status}");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn an_answer_that_may_not_be_shared_never_reaches_the_shared_tier() {
    let origin = MockOrigin::start().await.unwrap();
    origin.always(
        "/me",
        Reply::ok("mine").header("cache-control", "private, max-age=60"),
    );
    origin.always(
        "/cookie",
        Reply::ok("crumbs")
            .header("cache-control", "max-age=60")
            .header("set-cookie", "id=1"),
    );
    let cache = Arc::new(HotCache::new(1 << 20, 8, || {}));
    let shared: Arc<dyn Tier> = cache.clone();
    let a = instance(&origin, shared).await;
    for path in ["/me", "/cookie"] {
        get(a, path).await;
    }
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(origin.hits(), 2);
}
