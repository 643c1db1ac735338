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

/// How a connection proves who it is to the vendor: the one credential type, from the
/// operator's input through the sealed store to the broker, the only reader of its value.
#[derive(Debug, Clone)]
pub enum Credential {
    /// An API key, applied the way the connector declares (`describe().auth`).
    ApiKey(Secret),
    /// An OAuth access token, sent as `Authorization: Bearer`, with what renews it when the
    /// vendor issues a refresh token.
    OAuth {
        access_token: Secret,
        refresh: Option<TokenRefresh>,
    },
}

/// What the host needs to renew an expired OAuth access token.
#[derive(Debug, Clone)]
pub struct TokenRefresh {
    pub refresh_token: Secret,
    pub token_url: String,
}

/// The kind of a credential, as stored and shown (the value itself is sealed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    ApiKey,
    OAuth,
}

impl Credential {
    /// An OAuth access token that cannot be renewed.
    pub fn access_token(token: Secret) -> Credential {
        Credential::OAuth {
            access_token: token,
            refresh: None,
        }
    }

    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::ApiKey(_) => CredentialKind::ApiKey,
            Credential::OAuth { .. } => CredentialKind::OAuth,
        }
    }

    /// The value the vendor receives.
    pub fn secret(&self) -> &Secret {
        match self {
            Credential::ApiKey(key) => key,
            Credential::OAuth { access_token, .. } => access_token,
        }
    }

    /// The data centre an API key names after its last dash (`<key>-us21`), if any.
    pub(crate) fn key_suffix(&self) -> Option<String> {
        match self {
            Credential::ApiKey(key) => key.expose().rsplit_once('-').map(|(_, dc)| dc.to_string()),
            Credential::OAuth { .. } => None,
        }
    }
}
