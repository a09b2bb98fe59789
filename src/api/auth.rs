//! Bearer tokens with roles, and the rate limit (per token, or per address without one).
//!
//! The tokens file (`api.tokens_file`, mode 0600) stores only SHA-256 hashes of the tokens:
//!
//! ```toml
//! [tokens.ci-bot]
//! role = "operator"          # may trigger backups and drills
//! token_sha256 = "9f86d0…"   # `dr keygen --api-token ci-bot --role operator` prints both
//! [tokens.auditor-jane]
//! role = "auditor"           # read-only
//! token_sha256 = "…"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything, trigger backups and drills.
    Operator,
    /// Read everything.
    Auditor,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: BTreeMap<String, TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    role: Role,
    token_sha256: String,
}

/// Known tokens by hash.
#[derive(Debug, Default)]
pub struct Tokens(HashMap<[u8; 32], (String, Role)>);

impl Tokens {
    /// Loads the tokens file.
    ///
    /// # Errors
    /// Unreadable, loosely protected, or malformed file (naming the entry).
    pub fn load(path: &Path) -> Result<Self, String> {
        crate::config::check_secret_file(path, true)?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: TokensFile =
            toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
        let mut out = HashMap::new();
        for (name, t) in f.tokens {
            let mut h = [0u8; 32];
            hex::decode_to_slice(t.token_sha256.trim(), &mut h).map_err(|_| {
                format!(
                    "{}: tokens.{name}.token_sha256 must be 64 hex digits",
                    path.display()
                )
            })?;
            out.insert(h, (name, t.role));
        }
        Ok(Self(out))
    }

    /// The token's name and role, if it is known.
    pub fn check(&self, token: &str) -> Option<(&str, Role)> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.0.get(&h).map(|(n, r)| (n.as_str(), *r))
    }
}

/// A new token and the hex SHA-256 to store.
pub fn generate_token() -> (String, String) {
    let token = format!(
        "dr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    (token, hash)
}

/// Whom a request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A valid token, by its name: its holder's requests, from wherever they come.
    Token(String),
    /// A request without a valid token, by source address: IPv4 addresses whole, IPv6 by
    /// their /64 (one host usually holds a whole /64).
    Address(IpAddr),
}

impl Client {
    /// The address key of `ip`.
    pub fn address(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::Address(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::Address(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Self::Address(IpAddr::V6(std::net::Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

/// Tracked clients at most before windows that ended are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// Fixed one-minute windows per [`Client`].
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<Client, (Instant, u32)>>,
}

impl RateLimiter {
    /// `per_minute` requests per client per minute.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::default(),
        }
    }

    /// Counts a request; `Err(seconds to wait)` when over the limit.
    pub fn hit(&self, client: Client) -> Result<(), u64> {
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let mut w = self.windows.lock().expect("rate limiter lock");
        if w.len() > PRUNE_ABOVE {
            w.retain(|_, (start, _)| now.duration_since(*start) < minute);
        }
        let e = w.entry(client).or_insert((now, 0));
        if now.duration_since(e.0) >= minute {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        if e.1 > self.per_minute {
            Err(60u64
                .saturating_sub(now.duration_since(e.0).as_secs())
                .max(1))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn tokens_are_matched_by_hash_and_roles_kept() {
        let (token, hash) = generate_token();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens.toml");
        std::fs::write(
            &f,
            format!("[tokens.bot]\nrole = \"operator\"\ntoken_sha256 = \"{hash}\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Tokens::load(&f).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = Tokens::load(&f).unwrap();
        assert_eq!(t.check(&token), Some(("bot", Role::Operator)));
        assert_eq!(t.check(&hash), None, "the hash is not a token");
        assert_eq!(t.check("dr_wrong"), None);
    }

    #[test]
    fn rate_limit_per_address_and_per_token() {
        let l = RateLimiter::new(3);
        let ip = |s: &str| Client::address(s.parse().unwrap());
        for _ in 0..3 {
            l.hit(ip("10.0.0.1")).unwrap();
        }
        assert!(l.hit(ip("10.0.0.1")).is_err());
        l.hit(ip("10.0.0.2")).unwrap();
        // A token from the exhausted address has its own budget.
        l.hit(Client::Token("ops-bot".to_owned())).unwrap();
        // One IPv6 /64 is one client; an IPv4-mapped address is its IPv4 address.
        for _ in 0..3 {
            l.hit(ip("2001:db8:1:2::1")).unwrap();
        }
        assert!(l.hit(ip("2001:db8:1:2:ffff::9")).is_err());
        l.hit(ip("2001:db8:1:3::1")).unwrap();
        assert!(l.hit(ip("::ffff:10.0.0.1")).is_err());
    }
}
