//! The admission checks, one request head at a time.

use std::path::Path;

use http::Request;

use super::*;

fn admission(server: &str) -> (Admission, ClientLimitCounters) {
    let text = format!("[origin]\nurl = \"http://origin.test:9000\"\n[server]\n{server}");
    let config = Config::parse(&text, Path::new("test.toml")).unwrap();
    let counters = ClientLimitCounters::default();
    (Admission::new(&config, counters.clone()), counters)
}

fn parts(request: Request<()>) -> Parts {
    request.into_parts().0
}

#[test]
fn connect_is_refused_with_405() {
    let (admission, counters) = admission("");
    let request = Request::connect("origin.test:443").body(()).unwrap();
    let refused = admission.check(&parts(request)).unwrap_err();
    assert_eq!(refused.status(), 405);
    assert_eq!(counters.get(ClientLimit::Method), 1);
}

#[test]
fn absolute_form_only_for_the_origin_and_listed_hosts() {
    let (admission, counters) = admission("hosts = [\"shop.example\", \"api.example:8080\"]");
    let check = |uri: &str| {
        let request = Request::get(uri).header("host", "x").body(()).unwrap();
        admission.check(&parts(request)).map(|_| ())
    };
    assert!(check("/plain/origin-form").is_ok());
    assert!(check("http://origin.test:9000/p").is_ok());
    assert!(check("http://ORIGIN.test:9000/p").is_ok());
    assert!(check("http://shop.example/p").is_ok());
    assert!(check("http://shop.example:1234/p").is_ok());
    assert!(check("http://api.example:8080/p").is_ok());
    for foreign in [
        "http://evil.example/",
        "http://origin.test/p",
        "http://api.example/p",
        "https://origin.test:9001/p",
    ] {
        let refused = check(foreign).unwrap_err();
        assert_eq!(refused.status(), 421, "{foreign}");
    }
    assert_eq!(counters.get(ClientLimit::Host), 4);
}

#[test]
fn http2_authority_is_not_absolute_form() {
    let (admission, _) = admission("");
    let request = Request::get("http://any.example/p")
        .version(Version::HTTP_2)
        .body(())
        .unwrap();
    assert!(admission.check(&parts(request)).is_ok());
}

#[test]
fn declared_body_over_the_limit_is_refused_unread() {
    let (admission, counters) = admission("max_request_body = \"1KiB\"");
    let with_length = |length: &str| {
        let request = Request::post("/upload")
            .header(header::HOST, "x")
            .header(header::CONTENT_LENGTH, length)
            .body(())
            .unwrap();
        admission.check(&parts(request)).map(|_| ())
    };
    assert!(with_length("1024").is_ok());
    assert_eq!(with_length("1025").unwrap_err().status(), 413);
    assert_eq!(with_length("2147483648").unwrap_err().status(), 413);
    assert_eq!(counters.get(ClientLimit::BodySize), 2);
}

#[test]
fn head_over_the_limit_is_refused_with_431() {
    let (admission, counters) = admission("max_header_size = \"1KiB\"");
    let request = Request::get("/p")
        .header(header::HOST, "x")
        .header("x-big", "a".repeat(2000))
        .body(())
        .unwrap();
    assert_eq!(admission.check(&parts(request)).unwrap_err().status(), 431);
    assert_eq!(counters.get(ClientLimit::HeaderSize), 1);
}

/// A request body that streams `chunks` (an error ends it broken).
fn streamed(
    chunks: Vec<Result<Bytes, std::io::Error>>,
) -> impl http_body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static {
    http_body_util::StreamBody::new(
        futures_util::stream::iter(chunks).map(|c| c.map(http_body::Frame::data)),
    )
}

#[tokio::test]
async fn streamed_body_is_cut_off_past_the_limit() {
    let (admission, counters) = admission("max_request_body = \"10B\"");
    let body = streamed(vec![
        Ok(Bytes::from_static(b"123456")),
        Ok(Bytes::from_static(b"789012")),
    ]);
    let (limited, check) = admission.limit_body(body);
    let mut stream = http_body_util::BodyDataStream::new(limited);
    assert_eq!(stream.next().await.unwrap().unwrap(), "123456");
    assert!(admission.body_refusal(&check).is_none());
    assert!(stream.next().await.unwrap().is_err());
    assert_eq!(admission.body_refusal(&check).unwrap().status(), 413);
    assert_eq!(counters.get(ClientLimit::BodySize), 1);
}

#[tokio::test]
async fn a_body_that_breaks_is_the_clients_fault() {
    let (admission, counters) = admission("");
    let body = streamed(vec![
        Ok(Bytes::from_static(b"12")),
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bad chunk size",
        )),
    ]);
    let (limited, check) = admission.limit_body(body);
    let mut stream = http_body_util::BodyDataStream::new(limited);
    assert!(stream.next().await.unwrap().is_ok());
    assert!(stream.next().await.unwrap().is_err());
    assert_eq!(admission.body_refusal(&check).unwrap().status(), 400);
    assert_eq!(counters.get(ClientLimit::Malformed), 1);
}

fn addressed(request: http::request::Builder) -> Result<Option<String>, &'static str> {
    let parts = parts(request.body(()).unwrap());
    addressed_authority(&parts).map(|a| a.map(str::to_owned))
}

#[test]
fn host_must_be_one_valid_host_and_port() {
    let get = || Request::get("/p");
    assert_eq!(
        addressed(get().header("host", "Shop.Example:8080")),
        Ok(Some("Shop.Example:8080".into()))
    );
    assert_eq!(
        addressed(get().header("host", "[::1]:80")),
        Ok(Some("[::1]:80".into()))
    );
    for good in ["a%41b", "a:0", "a:65535", "xn--bcher-kva.example:1"] {
        assert_eq!(
            addressed(get().header("host", good)),
            Ok(Some(good.into())),
            "{good:?}"
        );
    }
    assert!(addressed(get()).is_err(), "HTTP/1.1 without Host");
    assert!(addressed(get().header("host", "a").header("host", "a")).is_err());
    for bad in [
        "",
        "a/b",
        "a b",
        "user@a",
        "a:",
        "a:99999",
        "a:65536",
        "a:+80",
        "a:8 0",
        ":80",
        "a%4",
        "a%zz",
        "a:x",
        "a?b",
        "a#b",
        "[::1",
        "[::1]junk",
        "[::1]:80x",
    ] {
        assert!(addressed(get().header("host", bad)).is_err(), "{bad:?}");
    }
    assert_eq!(addressed(get().version(Version::HTTP_10)), Ok(None));
}

#[test]
fn absolute_form_authority_replaces_host_and_h2_must_agree() {
    let absolute = Request::get("http://shop.example/p").header("host", "other.example");
    assert_eq!(addressed(absolute), Ok(Some("shop.example".into())));
    let h2 = || Request::get("http://shop.example/p").version(Version::HTTP_2);
    assert_eq!(addressed(h2()), Ok(Some("shop.example".into())));
    assert_eq!(
        addressed(h2().header("host", "SHOP.example")),
        Ok(Some("shop.example".into()))
    );
    assert!(addressed(h2().header("host", "evil.example")).is_err());
    let h2_host_only = Request::get("/p")
        .version(Version::HTTP_2)
        .header("host", "a");
    assert_eq!(addressed(h2_host_only), Ok(Some("a".into())));
    assert!(addressed(Request::get("/p").version(Version::HTTP_2)).is_err());
}

#[test]
fn a_preserving_route_admits_listed_hosts_only_in_canonical_form() {
    let text = "[origin]\nurl = \"http://origin.test:9000\"\n[server]\nhosts = [\"shop.example\"]\n[[route]]\nmatch = \"/\"\npreserve_host = true\nhosts = [\"api.example:8080\"]\n";
    let config = Config::parse(text, Path::new("test.toml")).unwrap();
    let counters = ClientLimitCounters::default();
    let admission = Admission::new(&config, counters.clone());
    let table = config.route_table();
    let route = &table.routes()[0];
    let host = |addressed| {
        admission
            .preserved_host(route, Some(addressed))
            .map(|h| h.unwrap())
    };
    assert_eq!(host("Shop.Example:80").unwrap(), "shop.example");
    assert_eq!(host("api.example:8080").unwrap(), "api.example:8080");
    assert_eq!(host("api.example").unwrap_err().status(), 421);
    assert_eq!(host("evil.example").unwrap_err().status(), 421);
    assert_eq!(
        admission.preserved_host(route, None).unwrap_err().status(),
        421
    );
    assert_eq!(counters.get(ClientLimit::Host), 3);
}
