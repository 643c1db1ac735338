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
}

/// Nothing of the credential, not even a hash (a plain hash of a weak key can be tested
/// offline): [`crate::MasterKey::fingerprint`] tells credentials apart.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[credential]")
    }
}
