//! Live reload: re-read the config file and apply what can change without a
//! restart. Routes, TTLs, lock timeouts, hit-for-pass windows, the access log
//! switch, the admin token and the origins (added, removed or changed, CA
//! files re-read) change for requests that start afterwards; the listeners'
//! certificates change for connections that start afterwards. Open
//! connections, in-flight requests (and fills, on the origin they started
//! with) and the cache are untouched; an origin whose settings did not change
//! keeps its pool and breaker. Listen addresses and the other `[server]`
//! limits, whether a listener terminates TLS, and the `[cache]` sizes cannot
//! change by reload: a file that changes them is still applied for the rest,
//! and each ignored change is named in the report (logged, and in the
//! `POST /reload` answer).
//!
//! A reload is all or nothing: the file, every certificate and key it names
//! (each key must match its certificate) and every origin's CA file are
//! loaded and checked before anything is applied, and any problem keeps the
//! running config, certificates and origins in force.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::{Config, ConfigError};
use crate::proxy::Proxy;
use crate::tls::{ListenerCertificates, ListenerTls};

/// Why a reload was refused; the running config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// corral was started with `--origin`, so there is no file to re-read.
    #[error("corral was started without a config file; nothing to reload")]
    NoConfigFile,
    /// The file is unreadable or invalid, or a certificate, key or CA file
    /// it names cannot be used. Displays as the [`ConfigError`] does: for an
    /// invalid file, one `file:line:col: reason` line per problem.
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
    /// The listeners' TLS sides, whose certificates a reload replaces.
    tls: ListenerTls,
    path: Option<PathBuf>,
    current: Arc<Mutex<Config>>,
}

impl Reloader {
    /// A reloader for `proxy` and the listeners' `tls`, running with
    /// `config` read from `path` (if any).
    pub fn new(proxy: Proxy, tls: ListenerTls, config: Config, path: Option<PathBuf>) -> Reloader {
        Reloader {
            proxy,
            tls,
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
        let certificates = ListenerCertificates::load(&next);
        let settings = self.proxy.prepare(&next);
        let (certificates, settings) = match (certificates, settings) {
            (Ok(certificates), Ok(settings)) => (certificates, settings),
            (certificates, settings) => {
                let problems = certificates
                    .err()
                    .into_iter()
                    .chain(settings.err())
                    .flatten()
                    .collect();
                return Err(next.refuse(problems).into());
            }
        };
        let mut ignored = restart_only_changes(&current, &next);
        ignored.extend(self.tls.replace(&certificates));
        self.proxy.apply(settings);
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
    // Each listener's settings are fixed when it starts.
    macro_rules! restart_only {
        ($($field:ident),* $(,)?) => {
            $(
                if current.server.$field != next.server.$field {
                    ignored.push(format!(
                        "server.{} changed (restart to apply)",
                        stringify!($field)
                    ));
                }
            )*
        };
    }
    restart_only!(
        header_read_timeout,
        idle_timeout,
        max_header_size,
        max_request_body,
        max_connections,
        shutdown_timeout,
        hosts,
    );
    if current.origin.authority() != next.origin.authority() {
        // Admission learns the origin's own host once, at start.
        ignored.push(
            "origin.url names another host: requests go there now, but absolute-form \
             request targets naming it are accepted only after a restart"
                .to_owned(),
        );
    }
    if current.cache.max_size != next.cache.max_size
        || current.cache.max_object_size != next.cache.max_object_size
        || current.cache.max_variants != next.cache.max_variants
    {
        ignored.push("cache sizes changed (restart to apply)".to_owned());
    }
    let fleet = |config: &Config| {
        let fleet = &config.fleet;
        (
            fleet.redis.as_ref().map(|url| url.get_ref().clone()),
            fleet.key_prefix.clone(),
            fleet.lookup_timeout,
            fleet.lock_lease,
            fleet.max_value_size,
        )
    };
    if fleet(current) != fleet(next) {
        // The fleet's connections, lock lease and names are set up once.
        ignored.push("[fleet] changed (restart to apply)".to_owned());
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
    fn a_changed_fleet_is_reported_as_needing_a_restart() {
        let before = parse("");
        let mut after = parse("");
        after.fleet.lookup_timeout = std::time::Duration::from_millis(80);
        let ignored = restart_only_changes(&before, &after);
        assert_eq!(ignored, ["[fleet] changed (restart to apply)"]);
    }

    #[test]
    fn unchanged_restart_only_settings_report_nothing() {
        assert!(restart_only_changes(&parse(""), &parse("")).is_empty());
    }

    #[test]
    fn changed_origin_settings_apply_live() {
        let changed = parse("retries = 5\nmax_concurrent = 3\nhttp2 = \"never\"");
        assert!(restart_only_changes(&parse(""), &changed).is_empty());
    }
}
