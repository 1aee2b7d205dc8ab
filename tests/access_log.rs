//! The access log as the binary writes it: one line per request, through the
//! batched log writer, in text and JSON, with the same fields as before it
//! was taken off `tracing`'s formatter; everything pending is flushed when
//! corral stops on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use corral::testing::mock_origin::{MockOrigin, Reply};
use tokio::sync::mpsc;

/// Longest wait for any one line from the child.
const WITHIN: Duration = Duration::from_secs(20);

/// The corral child, killed if a failing test leaves it running.
struct Corral(Child);

impl Drop for Corral {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The corral binary in front of `origin` on a free port, logging at info in
/// `format`, and its stderr lines as they come.
fn spawn(origin: &MockOrigin, format: &str) -> (Corral, mpsc::UnboundedReceiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["--origin", &origin.url(), "--ttl", "60s"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("CORRAL_LOG_FORMAT", format)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corral");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines, received) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    (Corral(child), received)
}

/// Reads lines until one contains `needle`; returns every line read.
async fn read_until(lines: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(WITHIN, lines.recv()).await {
            Ok(Some(line)) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Ok(None) => panic!("corral's stderr ended before {needle:?}: {seen:#?}"),
            Err(_) => panic!("no {needle:?} from corral within {WITHIN:?}: {seen:#?}"),
        }
    }
}

/// The proxy's address, from the "corral is serving" line.
fn listen_address(lines: &[String]) -> String {
    let line = lines
        .iter()
        .find(|line| line.contains("corral is serving"))
        .expect("serving line");
    let start = line.find("listen").expect("listen field") + "listen".len();
    line[start..]
        .trim_start_matches(['=', '"', ':'])
        .split(['"', ' ', ','])
        .next()
        .expect("address")
        .to_owned()
}

/// Asks for `/p` twice (a miss, then a hit), stops corral with SIGTERM and
/// returns every stderr line it wrote.
async fn miss_hit_stop(format: &str) -> Vec<String> {
    let origin = MockOrigin::start().await.unwrap();
    origin.always("/p", Reply::ok("hello"));
    let (mut corral, mut lines) = spawn(&origin, format);
    let mut seen = read_until(&mut lines, "corral is serving").await;
    let address = listen_address(&seen);
    let client = support::client();
    for _ in 0..2 {
        let answer = client
            .get(format!("http://{address}/p?token=secret"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), "hello");
    }
    assert_eq!(origin.hits(), 1);
    let stopped = Command::new("kill")
        .args(["-TERM", &corral.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(stopped.success());
    while let Ok(Some(line)) = tokio::time::timeout(WITHIN, lines.recv()).await {
        seen.push(line);
    }
    let status = corral.0.wait().expect("corral exits");
    assert!(status.success(), "{status:?}");
    seen
}

#[tokio::test]
async fn text_lines_carry_every_field_and_are_flushed_at_stop() {
    let lines = miss_hit_stop("text").await;
    let access: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains(" INFO corral::access: "))
        .collect();
    assert_eq!(access.len(), 2, "{lines:#?}");
    for (line, outcome) in access.iter().zip(["miss", "hit"]) {
        let fields = line.split(" corral::access: ").nth(1).unwrap();
        assert!(
            fields.starts_with(&format!(
                "method=GET path=\"/p\" status=200 cache_status=\"{outcome}\" duration_ms="
            )),
            "{line}"
        );
        assert!(line.ends_with(" bytes=5"), "{line}");
        assert!(
            !line.contains("secret"),
            "the query is never logged: {line}"
        );
    }
    assert!(
        lines.last().unwrap().contains("stopped"),
        "lines pending at SIGTERM reach the output: {lines:#?}"
    );
}

#[tokio::test]
async fn json_lines_are_objects_with_the_same_fields() {
    let lines = miss_hit_stop("json").await;
    let access: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect(line))
        .filter(|event| event["target"] == "corral::access")
        .collect();
    assert_eq!(access.len(), 2, "{lines:#?}");
    for (event, outcome) in access.iter().zip(["miss", "hit"]) {
        let fields = &event["fields"];
        assert_eq!(event["level"], "INFO");
        assert_eq!(fields["method"], "GET");
        assert_eq!(fields["path"], "/p");
        assert_eq!(fields["status"], 200);
        assert_eq!(fields["cache_status"], outcome);
        assert_eq!(fields["bytes"], 5);
        assert!(fields["duration_ms"].as_f64().unwrap() >= 0.0);
    }
}
