//! What the fleet calls things in Redis, decided in one place.
//!
//! For a cache key `K` (its encoded form, [`CacheKey::as_str`]) under the
//! prefix `P`:
//!
//! | name            | what                                                   |
//! |-----------------|--------------------------------------------------------|
//! | `P{K}:entry`    | the stored entry, in its wire form, expiring with it   |
//! | `P{K}:lock`     | the fetch lock: a holder's random token, with a lease  |
//! | `P{K}:done`     | the channel a holder announces its fetch's end on      |
//! | `Ppurge`        | the channel purges and invalidations reach every instance on |
//!
//! `{K}` is a Redis Cluster hash tag: a key's entry, lock and channel live in
//! one slot, and different keys spread over slots. A key holding `}` still
//! hashes its three names alike (the tag ends at the first `}` in each), and
//! the prefix may not hold braces (config validation refuses them).

use super::super::CacheKey;

/// The names of one fleet's keys and channels.
#[derive(Debug, Clone)]
pub(super) struct Names {
    prefix: String,
}

const ENTRY: &str = ":entry";
const LOCK: &str = ":lock";
const DONE: &str = ":done";

impl Names {
    pub(super) fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    fn tagged(&self, key: &CacheKey, suffix: &str) -> String {
        let key = key.as_str();
        let mut name = String::with_capacity(self.prefix.len() + key.len() + 2 + suffix.len());
        name.push_str(&self.prefix);
        name.push('{');
        name.push_str(key);
        name.push('}');
        name.push_str(suffix);
        name
    }

    /// Where `key`'s entry is stored.
    pub(super) fn entry(&self, key: &CacheKey) -> String {
        self.tagged(key, ENTRY)
    }

    /// `key`'s fetch lock.
    pub(super) fn lock(&self, key: &CacheKey) -> String {
        self.tagged(key, LOCK)
    }

    /// The channel `key`'s fetches are announced on.
    pub(super) fn done(&self, key: &CacheKey) -> String {
        self.tagged(key, DONE)
    }

    /// The channel purges are announced on.
    pub(super) fn purge_channel(&self) -> String {
        format!("{}purge", self.prefix)
    }

    /// A `SCAN MATCH` pattern for every entry name (glob characters in the
    /// prefix escaped).
    pub(super) fn entry_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 12);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str("{*}");
        pattern.push_str(ENTRY);
        pattern
    }

    /// The cache key an entry name is for; `None` for any other name.
    pub(super) fn key_of_entry(&self, name: &str) -> Option<CacheKey> {
        let inner = name
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix(ENTRY)?
            .strip_suffix('}')?;
        CacheKey::decode(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_names_share_one_hash_tag_and_entry_names_read_back() {
        let names = Names::new("corral:");
        let key = CacheKey::new("shop.example", "/p/{id}?q=*");
        let entry = names.entry(&key);
        assert_eq!(entry, format!("corral:{{{}}}:entry", key.as_str()));
        assert_eq!(
            names.lock(&key),
            format!("corral:{{{}}}:lock", key.as_str())
        );
        assert_eq!(
            names.done(&key),
            format!("corral:{{{}}}:done", key.as_str())
        );
        assert_eq!(names.key_of_entry(&entry), Some(key.clone()));
        assert_eq!(names.key_of_entry(&names.lock(&key)), None);
        assert_eq!(names.key_of_entry("other:{3:abc1:/}:entry"), None);
    }

    #[test]
    fn glob_characters_in_the_prefix_are_escaped_in_the_scan_pattern() {
        assert_eq!(Names::new("a*b:").entry_pattern(), "a\\*b:{*}:entry");
    }
}
