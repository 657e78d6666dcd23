//! The token list the gateway serves: the configured list (a file, an SSM
//! parameter, the bundled list) and the managed tokens of the usage store,
//! merged.
//!
//! The merge is reloaded every `TOKENS_REFRESH_SECS` on every instance (one
//! read of the store; a request never waits for it), and at once on the
//! instance that made a change. A managed token disabled or revoked is left
//! out, so it is refused as unknown. The configured list wins a clash: a
//! managed token whose name (or token) an entry of the list also has is
//! left out, with an error in the log naming it. If the store cannot be
//! read, the last merge stays; before a first one, the configured list
//! alone is served (managed tokens are refused until the store answers).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::FixedOffset;

use crate::error::GatewayError;
use crate::sources::cached::{Cached, LoadError};
use crate::spend::registry::{Managed, Registry};
use crate::tokens::format;
use crate::tokens::{TokenEntry, TokenSet};

/// The merged list over `config` and `registry`'s tokens.
pub fn merged(
    config: Cached<TokenSet>,
    registry: Arc<dyn Registry>,
    offset: FixedOffset,
    refresh: Duration,
) -> Cached<TokenSet> {
    let loaded_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = Arc::new(move || {
        let (config, registry, loaded_once) =
            (config.clone(), registry.clone(), loaded_once.clone());
        Box::pin(async move {
            let listed = config.get().await.map_err(|error| LoadError::Unavailable {
                origin: "the token list".into(),
                reason: error.to_string(),
            })?;
            let managed = match registry.tokens().await {
                Ok(managed) => managed,
                Err(error) if !loaded_once.load(std::sync::atomic::Ordering::Relaxed) => {
                    tracing::warn!(%error, "managed tokens could not be read; serving the configured list alone until they can");
                    Vec::new()
                }
                Err(error) => {
                    return Err(LoadError::Unavailable {
                        origin: "managed tokens".into(),
                        reason: error.to_string(),
                    })
                }
            };
            loaded_once.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(merge(&listed, &managed, offset))
        }) as crate::sources::cached::BoxFuture<_>
    });
    Cached::refreshing(
        "managed tokens",
        GatewayError::TokenStoreUnavailable,
        loader,
        refresh,
    )
}

/// A stored entry, read back as the token file's parser reads an entry.
pub fn parse(managed: &Managed, offset: FixedOffset) -> Result<TokenEntry, String> {
    let list = format::parse(&format!("[{}]", managed.entry), offset).map_err(|e| e.to_string())?;
    list.tokens
        .entries()
        .first()
        .cloned()
        .ok_or_else(|| "no entry".to_owned())
}

/// The configured entries, then the managed ones in force.
pub fn merge(listed: &TokenSet, managed: &[Managed], offset: FixedOffset) -> TokenSet {
    let mut entries: Vec<TokenEntry> = listed.entries().to_vec();
    let mut names: HashSet<Arc<str>> = entries.iter().map(|e| e.name.clone()).collect();
    let mut digests: HashSet<[u8; 32]> = entries.iter().map(|e| e.digest).collect();
    for token in managed.iter().filter(|m| !m.disabled && !m.revoked) {
        let entry = match parse(token, offset) {
            Ok(entry) => entry,
            Err(problem) => {
                tracing::error!(token = %token.name, %problem, "a managed token is malformed and is refused");
                continue;
            }
        };
        if names.contains(&entry.name) || digests.contains(&entry.digest) {
            tracing::error!(token = %token.name, "a managed token clashes with an entry of the token list, which wins; it is refused");
            continue;
        }
        names.insert(entry.name.clone());
        digests.insert(entry.digest);
        entries.push(entry);
    }
    TokenSet::new(entries).unwrap_or_else(|error| {
        // Not reachable (names and tokens were checked above); if it were,
        // the configured list alone is the safe answer.
        tracing::error!(%error, "the merged token list was refused; serving the configured list");
        listed.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn managed(name: &str, token: &str, disabled: bool, revoked: bool) -> Managed {
        let digest = crate::tokens::hex(&crate::tokens::digest(token.as_bytes()));
        let at = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        Managed {
            name: name.into(),
            entry: format!(
                r#"{{"name": "{name}", "sha256": "{digest}", "models": ["gpt-4o-mini"]}}"#
            ),
            disabled,
            revoked,
            created_at: at,
            updated_at: at,
            version: 1,
        }
    }

    #[test]
    fn managed_tokens_in_force_join_the_list_and_the_list_wins_a_clash() {
        let utc = FixedOffset::east_opt(0).unwrap();
        let listed = format::parse(r#"[{"name": "ops", "token": "t-ops", "admin": true}]"#, utc)
            .unwrap()
            .tokens;
        let stored = [
            managed("friend", "t-friend", false, false),
            managed("paused", "t-paused", true, false),
            managed("gone", "t-gone", false, true),
            managed("ops", "t-other", false, false),
            managed("copy", "t-ops", false, false),
            Managed {
                entry: "{\"name\": 5}".into(),
                ..managed("broken", "t-broken", false, false)
            },
        ];
        let set = merge(&listed, &stored, utc);
        let names: Vec<&str> = set.entries().iter().map(|e| &*e.name).collect();
        assert_eq!(names, ["ops", "friend"]);
        let friend = set.find(b"t-friend").unwrap();
        assert!(friend.rules.as_ref().unwrap().allows_model("gpt-4o-mini"));
        assert!(set.find(b"t-paused").is_none() && set.find(b"t-gone").is_none());
        assert!(set.find(b"t-other").is_none(), "a clashing name is refused");
        assert_eq!(&*set.find(b"t-ops").unwrap().name, "ops");
    }
}
