//! A credential that cannot be printed by accident.

use std::fmt;

/// A vendor credential (API key or access token). `Debug` and `Display` never show it; the only
/// way to the value is [`Secret::expose`], called where the broker builds the auth header.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential, trimming surrounding whitespace (a pasted key often carries a newline).
    pub fn new(value: String) -> Secret {
        Secret(value.trim().to_string())
    }

    /// The credential itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, stable, non-reversible identifier to tell credentials apart in output.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.0.as_bytes());
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(sha256:{}…)", self.fingerprint())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[credential sha256:{}…]", self.fingerprint())
    }
}
