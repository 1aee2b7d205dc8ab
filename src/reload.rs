//! Live reload: re-read the config file and apply what can change without a
//! restart. Routes, TTLs, lock timeouts, hit-for-pass windows, the access log
//! switch and the admin token change for requests that start afterwards; open
//! connections, in-flight requests and the cache are untouched. Listen
//! addresses and the other `[server]` limits, the `[origin]` settings (per-route
//! timeouts do reload) and the `[cache]` sizes cannot change by reload: a file
//! that changes them is still applied for the rest, and each ignored change
//! is named in the report (logged, and in the `POST /reload` answer).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::{Config, ConfigError};
use crate::proxy::Proxy;

/// Why a reload was refused; the running config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// corral was started with `--origin`, so there is no file to re-read.
    #[error("corral was started without a config file; nothing to reload")]
    NoConfigFile,
    /// The file is unreadable or invalid. Displays as the [`ConfigError`]
    /// does: for an invalid file, one `file:line:col: reason` line per problem.
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
}

/// What a successful reload applied.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// Routes now in force.
    pub routes: usize,
    /// Changes in the file that a reload cannot apply (restart needed).
    pub ignored: Vec<String>,
}

/// Re-reads and applies the config file. Cheap to clone; reloads are
/// serialised so two signals cannot interleave.
#[derive(Clone)]
pub struct Reloader {
    proxy: Proxy,
    path: Option<PathBuf>,
    current: Arc<Mutex<Config>>,
}

impl Reloader {
    /// A reloader for `proxy`, running with `config` read from `path` (if any).
    pub fn new(proxy: Proxy, config: Config, path: Option<PathBuf>) -> Reloader {
        Reloader {
            proxy,
            path,
            current: Arc::new(Mutex::new(config)),
        }
    }

    /// Re-reads the file and applies it.
    ///
    /// # Errors
    /// [`ReloadError`] when there is no file or it is invalid; nothing changes then.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoConfigFile)?;
        // A poisoned lock only means an earlier reload panicked mid-way; the
        // config inside is still a whole, valid one. The file is read under the
        // lock so that of two overlapping reloads, the later read wins.
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let next = Config::load(path)?;
        let ignored = restart_only_changes(&current, &next);
        self.proxy.reload(&next);
        let report = ReloadReport {
            routes: next.routes.len(),
            ignored,
        };
        *current = next;
        Ok(report)
    }
}

/// Settings in `next` that differ from `current` but need a restart.
fn restart_only_changes(current: &Config, next: &Config) -> Vec<String> {
    let mut ignored = Vec::new();
    if current.server.listen != next.server.listen {
        ignored.push(format!(
            "server.listen changed to {} (still listening on {}; restart to apply)",
            next.server.listen, current.server.listen
        ));
    }
    if current.server.admin_listen != next.server.admin_listen {
        ignored.push(format!(
            "server.admin_listen changed to {} (still listening on {}; restart to apply)",
            next.server.admin_listen, current.server.admin_listen
        ));
    }
    if current.origin.url.get_ref() != next.origin.url.get_ref() {
        ignored.push("origin.url changed (restart to apply)".to_owned());
    }
    // The origin client (pool, timeouts, retries, breaker, limits) is built
    // once; name each [origin] setting a reload did not apply.
    macro_rules! restart_only {
        ($section:ident, $note:literal: $($field:ident),* $(,)?) => {
            $(
                if current.$section.$field != next.$section.$field {
                    ignored.push(format!(
                        concat!(stringify!($section), ".{} changed (restart to apply", $note, ")"),
                        stringify!($field)
                    ));
                }
            )*
        };
    }
    restart_only!(
        server, "":
        header_read_timeout,
        idle_timeout,
        max_header_size,
        max_request_body,
        max_connections,
        shutdown_timeout,
        hosts,
    );
    restart_only!(
        origin, "; per-route timeouts reload live":
        connect_timeout,
        timeout,
        first_byte_timeout,
        request_timeout,
        pool_idle_timeout,
        pool_max_idle,
        retries,
        retry_backoff,
        retry_backoff_max,
        retry_budget,
        retry_budget_window,
        max_retry_after,
        breaker_failure_rate,
        breaker_min_requests,
        breaker_window,
        breaker_open_for,
        max_concurrent,
        queue_depth,
        queue_timeout,
    );
    if current.cache.max_size != next.cache.max_size
        || current.cache.max_object_size != next.cache.max_object_size
        || current.cache.max_variants != next.cache.max_variants
    {
        ignored.push("cache sizes changed (restart to apply)".to_owned());
    }
    ignored
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(extra_origin: &str) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[origin]\nurl = \"http://127.0.0.1:9000\"\n{extra_origin}\n\
             [[route]]\nmatch = \"/\"\nttl = \"5s\"\n"
        );
        Config::parse(&text, Path::new("corral.toml")).unwrap()
    }

    #[test]
    fn changed_server_limits_are_reported_as_ignored() {
        let before = parse("");
        let mut after = parse("");
        after.server.max_request_body = bytesize::ByteSize::kib(1);
        let ignored = restart_only_changes(&before, &after);
        assert_eq!(ignored.len(), 1, "{ignored:?}");
        assert!(
            ignored[0].starts_with("server.max_request_body changed"),
            "{ignored:?}"
        );
    }

    #[test]
    fn unchanged_restart_only_settings_report_nothing() {
        assert!(restart_only_changes(&parse(""), &parse("")).is_empty());
    }

    #[test]
    fn every_changed_origin_setting_is_reported_as_ignored() {
        let ignored = restart_only_changes(&parse(""), &parse("retries = 5\nmax_concurrent = 3"));
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(
            ignored[0].starts_with("origin.retries changed"),
            "{ignored:?}"
        );
        assert!(
            ignored[1].starts_with("origin.max_concurrent changed"),
            "{ignored:?}"
        );
    }
}
