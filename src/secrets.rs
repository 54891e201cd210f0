//! Secrets at rest: merchant API secrets, channel private keys and API keys are kept in
//! the configuration files sealed with AES-256-GCM under a master key, as
//! `enc:v1:<base64(nonce | ciphertext | tag)>`, and opened only in memory.
//!
//! The master key comes from `PAYGATE_MASTER_KEY` (64 hex digits) or a key file. Without
//! either the node uses the demo key, which is public (it is in this file) and exists so
//! that the shipped configuration runs with no edits; `serve --production` refuses it.

use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The prefix of a sealed value.
pub const SEALED_PREFIX: &str = "enc:v1:";

/// Where the demo key comes from: the SHA-256 of this public text. NOT SECRET.
const DEMO_KEY_SOURCE: &[u8] = b"paygate demo master key - public, for local trials only";

/// A secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The master key is malformed or unreadable.
    #[error("master key: {0}")]
    MasterKey(String),
    /// A sealed value is malformed, or was sealed under another key, or was altered.
    #[error("{0}: cannot be opened with this master key (sealed under another key, or altered)")]
    Open(String),
    /// A value that must be sealed is in plain text.
    #[error("{0}: must be sealed (`paygate secret seal`), not plain text")]
    Plain(String),
}

/// The key that seals and opens secrets.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
    demo: bool,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("demo", &self.demo).finish_non_exhaustive()
    }
}

impl MasterKey {
    /// The public demo key.
    pub fn demo() -> MasterKey {
        MasterKey { key: Sha256::digest(DEMO_KEY_SOURCE).into(), demo: true }
    }

    /// A key from 64 hex digits.
    pub fn from_hex(text: &str) -> Result<MasterKey, SecretError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SecretError::MasterKey("must be 64 hex digits".into()))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SecretError::MasterKey("must be 64 hex digits".into()))?;
        let demo = MasterKey::demo();
        Ok(MasterKey { key, demo: key == demo.key })
    }

    /// The key from `PAYGATE_MASTER_KEY`, else from `file` when given, else the demo key.
    pub fn resolve(env_value: Option<&str>, file: Option<&Path>) -> Result<MasterKey, SecretError> {
        if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
            return MasterKey::from_hex(v);
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| SecretError::MasterKey(format!("{}: {e}", path.display())))?;
            return MasterKey::from_hex(&text);
        }
        Ok(MasterKey::demo())
    }

    /// Whether this is the public demo key.
    pub fn is_demo(&self) -> bool {
        self.demo
    }

    /// Seals `plain` as `enc:v1:…` (a fresh random nonce each time).
    pub fn seal(&self, plain: &str) -> String {
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.key));
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encrypting into a Vec cannot fail for inputs under the 64 GiB GCM limit.
        let sealed = cipher.encrypt(&nonce, plain.as_bytes()).unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(blob))
    }

    /// Opens a sealed value; `what` names it in errors (never the value itself).
    pub fn open(&self, what: &str, sealed: &str) -> Result<String, SecretError> {
        let body = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(|| SecretError::Plain(what.to_owned()))?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|_| SecretError::Open(what.to_owned()))?;
        if blob.len() < 12 + 16 {
            return Err(SecretError::Open(what.to_owned()));
        }
        let (nonce, ciphertext) = blob.split_at(12);
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.key));
        let plain =
            cipher.decrypt(Nonce::from_slice(nonce), ciphertext).map_err(|_| SecretError::Open(what.to_owned()))?;
        String::from_utf8(plain).map_err(|_| SecretError::Open(what.to_owned()))
    }
}

/// Re-seals every sealed value in `text` (a configuration file) from key `from` to key
/// `to`, leaving every other byte as it was; answers the new text and how many values
/// were re-sealed. A value that does not open under `from` stops it, naming its line.
pub fn reseal_text(text: &str, from: &MasterKey, to: &MasterKey, file: &str) -> Result<(String, usize), SecretError> {
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find(SEALED_PREFIX) {
            out.push_str(&rest[..at]);
            let value = &rest[at..];
            let end = value.find(|c: char| !(c.is_ascii_alphanumeric() || "+/=:".contains(c))).unwrap_or(value.len());
            let (sealed, after) = value.split_at(end);
            let plain = from.open(&format!("{file} line {}", n + 1), sealed)?;
            out.push_str(&to.seal(&plain));
            count += 1;
            rest = after;
        }
        out.push_str(rest);
    }
    Ok((out, count))
}

/// Whether a channel setting holds a secret (and so must be sealed): private keys, API
/// keys and shared secrets. Public keys and certificates are not secret.
pub fn is_secret_setting(name: &str) -> bool {
    name.contains("secret") || name.contains("private_key") || name == "api_key" || name == "api_v3_key"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reseal_moves_every_value_to_the_new_key_and_nothing_else() {
        let (old, new) = (MasterKey::demo(), MasterKey::from_hex(&"ab".repeat(32)).unwrap());
        let text = format!(
            "# a comment with enc:v1 in words\n[a]\nsecret = \"{}\"\nplain = \"x\"\nkeys = [\"{}\", \"{}\"]\n",
            old.seal("one"),
            old.seal("two"),
            old.seal("three")
        );
        let (resealed, count) = reseal_text(&text, &old, &new, "t.toml").unwrap();
        assert_eq!(count, 3);
        let values: Vec<String> =
            resealed.split('"').filter(|v| v.starts_with(SEALED_PREFIX)).map(|v| new.open("v", v).unwrap()).collect();
        assert_eq!(values, ["one", "two", "three"]);
        assert!(resealed.starts_with("# a comment with enc:v1 in words\n[a]\nsecret = \""));
        assert!(resealed.contains("plain = \"x\"\n"));
        let err = reseal_text(&resealed, &old, &new, "t.toml").unwrap_err().to_string();
        assert!(err.contains("t.toml line 3"), "{err}");
    }

    #[test]
    fn seals_and_opens_and_refuses_tampering_and_other_keys() {
        let key = MasterKey::from_hex(&"ab".repeat(32)).unwrap();
        let sealed = key.seal("s3cret value");
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("s3cret"));
        assert_ne!(sealed, key.seal("s3cret value"), "a fresh nonce every time");
        assert_eq!(key.open("x", &sealed).unwrap(), "s3cret value");

        let other = MasterKey::from_hex(&"cd".repeat(32)).unwrap();
        assert!(matches!(other.open("x", &sealed), Err(SecretError::Open(_))));
        let mut blob = base64::engine::general_purpose::STANDARD.decode(&sealed[SEALED_PREFIX.len()..]).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        let tampered = format!("{SEALED_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(blob));
        assert!(matches!(key.open("x", &tampered), Err(SecretError::Open(_))));
        assert!(matches!(key.open("x", "plain"), Err(SecretError::Plain(_))));
    }

    #[test]
    fn the_demo_key_is_recognised_however_it_is_given() {
        assert!(MasterKey::demo().is_demo());
        let hex = hex::encode(MasterKey::demo().key);
        assert!(MasterKey::resolve(Some(&hex), None).unwrap().is_demo());
        assert!(!MasterKey::resolve(Some(&"01".repeat(32)), None).unwrap().is_demo());
        assert!(MasterKey::resolve(None, None).unwrap().is_demo());
        assert!(MasterKey::from_hex("zz").is_err());
    }

    #[test]
    fn error_messages_never_carry_the_value() {
        let e = MasterKey::demo().open("merchants[0].secret", "enc:v1:bm90IGEgcmVhbCBzZWFsZWQgdmFsdWU=").unwrap_err();
        assert!(e.to_string().contains("merchants[0].secret"));
        assert!(!e.to_string().contains("bm90"));
    }
}
