//! The master key that seals stored credentials (XChaCha20-Poly1305), loaded from the
//! environment or from a key file only its owner can read.

use std::fmt;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The environment variable that may hold the master key (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "CONNECTOR_HOST_MASTER_KEY";

const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// A 256-bit key. `Debug` shows only its id.
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
    id: String,
    /// Keys the credential fingerprints: derived from the master key, so that only who holds
    /// it can compute (or test guesses against) a fingerprint.
    fingerprint_key: [u8; 32],
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> MasterKey {
        MasterKey::from_bytes(&XChaCha20Poly1305::generate_key(&mut OsRng))
    }

    /// Parses a key written as base64 (as `connector-host key generate` writes it) or 64 hex digits.
    pub fn from_text(text: &str) -> Result<MasterKey> {
        let text = text.trim();
        let bytes = if text.len() == 2 * KEY_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..KEY_BYTES)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()?
        } else {
            BASE64.decode(text).map_err(|_| {
                anyhow::anyhow!("the master key is not base64 (or hex) of {KEY_BYTES} bytes")
            })?
        };
        if bytes.len() != KEY_BYTES {
            bail!(
                "the master key has {} bytes; it must have {KEY_BYTES} (generate one with `connector-host key generate`)",
                bytes.len()
            );
        }
        Ok(MasterKey::from_bytes(&bytes))
    }

    /// Reads a key file, refusing one that anyone but its owner may read or write.
    pub fn from_file(path: &Path) -> Result<MasterKey> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read the master key file {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "the master key file {} is open to other users (mode {mode:04o}); run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
        }
        let _ = meta;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the master key file {}", path.display()))?;
        MasterKey::from_text(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Writes a new key file readable by its owner only; never overwrites one.
    pub fn create_file(path: &Path) -> Result<MasterKey> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            super::create_private_dir(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).with_context(|| {
            format!(
                "cannot create the key file {} (an existing key is never overwritten)",
                path.display()
            )
        })?;
        let bytes = XChaCha20Poly1305::generate_key(&mut OsRng);
        writeln!(file, "{}", BASE64.encode(bytes))?;
        file.sync_all()?;
        Ok(MasterKey::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8]) -> MasterKey {
        use sha2::{Digest, Sha256};
        let derive = |label: &[u8]| {
            Sha256::new()
                .chain_update(label)
                .chain_update(bytes)
                .finalize()
        };
        let id = derive(b"connector-host master key id\0")[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        MasterKey {
            cipher: XChaCha20Poly1305::new_from_slice(bytes).expect("32-byte key"),
            id,
            fingerprint_key: derive(b"connector-host credential fingerprint\0").into(),
        }
    }

    /// A short, stable identifier of a credential (HMAC-SHA-256 under a key derived from this
    /// one, 16 hex digits): it tells credentials apart in output and history, and without the
    /// master key nobody can check a guessed credential against it.
    pub fn fingerprint(&self, secret: &crate::secret::Secret) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.fingerprint_key)
            .expect("HMAC takes keys of any length");
        mac.update(secret.expose().as_bytes());
        mac.finalize().into_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A public identifier of the key (a hash), to tell keys apart without revealing them.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext`, bound to `context` (decrypting under another context fails).
    pub(crate) fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory data");
        [nonce.as_slice(), &sealed].concat()
    }

    /// Decrypts what [`MasterKey::seal`] produced under the same key and context.
    pub(crate) fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_BYTES {
            bail!("the sealed credential is truncated");
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "the credential could not be decrypted with master key {}: wrong key, or the stored data was altered",
                    self.id
                )
            })
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(id {})", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_the_same_key_and_context() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"secret-value", b"connection:a");
        assert!(!sealed.windows(12).any(|w| w == b"secret-value"));
        assert_eq!(key.open(&sealed, b"connection:a").unwrap(), b"secret-value");
        assert!(key.open(&sealed, b"connection:b").is_err());
        let other = MasterKey::generate();
        let err = other
            .open(&sealed, b"connection:a")
            .unwrap_err()
            .to_string();
        assert!(err.contains("wrong key"), "{err}");
        assert_ne!(key.id(), other.id());
    }

    #[test]
    fn key_files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/master.key");
        let key = MasterKey::create_file(&path).unwrap();
        assert_eq!(MasterKey::from_file(&path).unwrap().id(), key.id());
        assert!(MasterKey::create_file(&path).is_err(), "never overwrites");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = MasterKey::from_file(&path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
        assert!(MasterKey::from_text("c2hvcnQ=").is_err());
    }
}
