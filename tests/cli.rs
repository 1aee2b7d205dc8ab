//! `corral check FILE`, run as the real binary: an invalid config is refused
//! with one `file:line:col: reason` line per problem and a non-zero exit; a
//! valid one exits 0 (DESIGN.md invariant 9), and so do the example configs
//! the repository ships.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory of its own under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("corral-cli-{name}-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, text).expect("write config file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corral"))
        .arg("check")
        .arg(file)
        .env_remove("CORRAL_CONFIG")
        .env_remove("CORRAL_ORIGIN")
        .output()
        .expect("run corral check")
}

/// Asserts `corral check` refused `file` at `line:col`, with a reason containing `mentions`.
fn assert_refused_at(file: &Path, line: usize, column: usize, mentions: &str) {
    let output = check(file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "an invalid config must exit non-zero; stderr: {stderr}"
    );
    let prefix = format!("{}:{line}:{column}: ", file.display());
    let first_line = stderr.lines().next().unwrap_or("");
    assert!(
        first_line.starts_with(&prefix),
        "expected `{prefix}<reason>`, got: {stderr}"
    );
    let reason = &first_line[prefix.len()..];
    assert!(!reason.trim().is_empty(), "the reason is missing: {stderr}");
    assert!(
        reason.contains(mentions),
        "the reason should mention {mentions:?}: {stderr}"
    );
}

#[test]
fn check_refuses_unknown_key_with_file_line_col() {
    let dir = TempDir::new("unknown-key");
    let file = dir.write(
        "corral.toml",
        "[origin]\nurl = \"http://127.0.0.1:9000\"\n\n[[route]]\nmatch = \"/api/\"\ncolour = \"blue\"\n",
    );
    assert_refused_at(&file, 6, 1, "colour");
}

#[test]
fn check_refuses_bad_duration_with_file_line_col() {
    let dir = TempDir::new("bad-duration");
    let file = dir.write(
        "corral.toml",
        "[origin]\nurl = \"http://127.0.0.1:9000\"\n\n[[route]]\nmatch = \"/api/\"\nttl = \"forever\"\n",
    );
    assert_refused_at(&file, 6, 7, "forever");
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = TempDir::new("valid");
    let file = dir.write(
        "corral.toml",
        r#"[origin]
url = "http://127.0.0.1:9000"
timeout = "300ms"

[cache]
max_size = "64MiB"
max_object_size = "1MiB"

[[route]]
match = "/api/products/*"
ttl = "30s"
lock_timeout = "200ms"

[[route]]
match = "/api/cart/"
cache = false
"#,
    );
    let output = check(&file);
    assert!(
        output.status.success(),
        "a valid config must exit 0; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_reports_every_problem_of_a_file_one_per_line() {
    let dir = TempDir::new("many-problems");
    let file = dir.write(
        "corral.toml",
        r#"[server]
hosts = ["ok.example", "user@evil"]

[origin]
url = "http://127.0.0.1:9000"

[[route]]
match = "api/"

[[route]]
match = "/cart/"
lock_timeout = "0s"
"#,
    );
    let output = check(&file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "an invalid config must exit 1; stderr: {stderr}"
    );
    let path = file.display();
    let expected = [
        format!(r#"{path}:2:24: server.hosts entry "user@evil" must be a host name or host:port"#),
        format!(r#"{path}:8:9: route match "api/" must start with '/' or '*'"#),
        format!(
            r#"{path}:11:9: route "/cart/": lock_timeout must be longer than zero (every follower would get 504)"#
        ),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines, expected, "stderr: {stderr}");
}

#[test]
fn check_accepts_the_shipped_example_configs() {
    // config/corral.toml (every key, in the Docker image) and config/fleet.toml
    // (what compose.yaml's replicas run) must stay valid as the schema grows.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["config/corral.toml", "config/fleet.toml"] {
        let output = check(&root.join(name));
        assert!(
            output.status.success(),
            "{name} must pass corral check; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
