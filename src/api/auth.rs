//! Bearer tokens with roles, and a per-IP rate limit.
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

/// Fixed one-minute windows per client IP.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimiter {
    /// `per_minute` requests per IP per minute.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::default(),
        }
    }

    /// Counts a request; `Err(seconds to wait)` when over the limit.
    pub fn hit(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let mut w = self.windows.lock().expect("rate limiter lock");
        if w.len() > 10_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let e = w.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(60) {
            *e = (now, 0);
        }
        e.1 += 1;
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
    fn rate_limit_per_ip() {
        let l = RateLimiter::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            l.hit(a).unwrap();
        }
        assert!(l.hit(a).is_err());
        l.hit(b).unwrap();
    }
}
