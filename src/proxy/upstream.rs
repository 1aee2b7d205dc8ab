//! The origins a request may go to: the default `[origin]` and each
//! `[origins.NAME]`, built together and swapped with the rest of the
//! reloadable settings. A route picks one by name; a request no route
//! matches goes to the default.
//!
//! A reload builds a new set, keeping the running client of every origin
//! whose spec (settings and CA certificates) did not change, so its pool,
//! breaker and retry budget carry on. A fill holds its origin's client
//! (an `Arc`), so a fill in flight when its origin is changed or removed
//! finishes on the client it started with.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cache::key::canonical_authority;
use crate::config::{Config, PlacedProblem, Route, origin_table};
use crate::metrics::Metrics;
use crate::origin::{OriginClient, OriginSpec};

/// One origin as the request path sees it.
#[derive(Debug)]
pub(super) struct Upstream {
    /// Its client: pool, protections, TLS.
    pub client: OriginClient,
    /// Its URL's authority, canonical: what the cache keys on for routes
    /// that do not preserve the client's host.
    pub authority: String,
}

impl Upstream {
    fn new(client: OriginClient) -> Upstream {
        let authority = client
            .spec()
            .config()
            .authority()
            .map(|authority| canonical_authority(authority.as_str()).into_owned())
            .unwrap_or_default();
        Upstream { client, authority }
    }
}

/// Every origin of one config.
#[derive(Debug)]
pub(super) struct Upstreams {
    default: Arc<Upstream>,
    named: BTreeMap<String, Arc<Upstream>>,
}

impl Upstreams {
    /// The origins `config` defines, reusing `running`'s client for each one
    /// whose spec is unchanged.
    ///
    /// # Errors
    /// Every origin whose `ca_file` cannot be used, or whose client cannot be
    /// built (an HTTPS origin on a system without CA roots), each at its
    /// setting's position; nothing is built then.
    pub(super) fn build(
        config: &Config,
        metrics: &Metrics,
        running: Option<&Upstreams>,
    ) -> Result<Upstreams, Vec<PlacedProblem>> {
        let mut problems = Vec::new();
        let mut built = Vec::new();
        for (name, origin) in config.all_origins() {
            let spec = match OriginSpec::load(name, origin) {
                Ok(spec) => spec,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            let kept = running
                .and_then(|running| running.find(name))
                .filter(|upstream| *upstream.client.spec() == spec);
            let upstream = match kept {
                Some(upstream) => Arc::clone(upstream),
                None => match OriginClient::new(spec, metrics) {
                    Ok(client) => Arc::new(Upstream::new(client)),
                    Err(error) => {
                        problems.push((
                            origin.url.span(),
                            format!("{}: cannot build its client: {error}", origin_table(name)),
                        ));
                        continue;
                    }
                },
            };
            built.push((name.map(str::to_owned), upstream));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut default = None;
        let mut named = BTreeMap::new();
        for (name, upstream) in built {
            match name {
                Some(name) => {
                    named.insert(name, upstream);
                }
                None => default = Some(upstream),
            }
        }
        match default {
            Some(default) => Ok(Upstreams { default, named }),
            // `all_origins` always yields the default first; unreachable.
            None => Err(vec![(0..0, "no default [origin]".to_owned())]),
        }
    }

    fn find(&self, name: Option<&str>) -> Option<&Arc<Upstream>> {
        match name {
            None => Some(&self.default),
            Some(name) => self.named.get(name),
        }
    }

    /// The origin requests on `route` go to (the default one when no route
    /// matched, or the route names none). A validated config names only
    /// origins it defines; were one missing, the default would answer.
    pub(super) fn for_route(&self, route: Option<&Route>) -> &Upstream {
        route
            .and_then(|route| route.origin.as_deref())
            .and_then(|name| self.named.get(name))
            .unwrap_or(&self.default)
    }

    /// The default `[origin]`.
    pub(super) fn default_origin(&self) -> &Upstream {
        &self.default
    }
}
