//! People and what they did: users with a role, the API tokens programs sign in with, the
//! console's sessions, and the audit log of every change.
//!
//! Nothing that signs anyone in is stored as it is: a password as an Argon2id hash, a token
//! and a session id as their SHA-256 (both are 256 random bits, so a fast hash is enough).

use anyhow::{Result, bail};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::db::{DbRow, params};
use super::{Actor, Role, State, now};
use crate::failure::{Conflict, NotFound};
use crate::secret::Secret;

/// What API tokens start with, so that a leaked one is recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "cht_";
/// How long a console session lasts from sign-in.
pub const SESSION_HOURS: i64 = 12;
/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// A user as listed (never with a password hash).
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// Whether the user can sign in to the console (tokens work without a password).
    pub has_password: bool,
    pub created_by: String,
    pub created_at: String,
}

/// An API token as listed: its public id (the characters after the prefix that begin it),
/// never the token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub label: String,
    pub created_by: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

/// A console session: who, and the token its forms must carry (CSRF).
pub struct Session {
    pub actor: Actor,
    pub csrf: String,
}

/// One change, as the audit log keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub role: Role,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

/// 256 random bits, base64url: for tokens that must not be guessed.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_user_name(name: &str) -> Result<()> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if !fine {
        bail!("`{name}` is not a usable user name: 1 to 64 letters, digits and `.`, `_`, `@`, `-`");
    }
    Ok(())
}

fn hash_password(password: &Secret) -> Result<String> {
    let text = password.expose();
    if text.chars().count() < MIN_PASSWORD_CHARS {
        bail!("a password must have at least {MIN_PASSWORD_CHARS} characters");
    }
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2::Argon2::default()
        .hash_password(text.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?
        .to_string())
}

const USER_COLUMNS: &str =
    "SELECT name, role, password_hash IS NOT NULL, created_by, created_at FROM users";

fn user_row(row: &DbRow) -> Result<User> {
    Ok(User {
        name: row.get(0)?,
        role: row.name(1)?,
        has_password: row.get::<i64>(2)? != 0,
        created_by: row.get(3)?,
        created_at: row.get(4)?,
    })
}

impl State {
    /// Adds a user. `by` is who adds it: an administrator, or [`Role::operator`] for whoever
    /// holds this state (the CLI: how the first administrator is made).
    pub async fn add_user(
        &self,
        by: &Actor,
        name: &str,
        role: Role,
        password: Option<&Secret>,
    ) -> Result<User> {
        check_user_name(name)?;
        let hash = password.map(hash_password).transpose()?;
        let added = self
            .db
            .execute(
                "INSERT INTO users (name, role, password_hash, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![name, role.name(), &hash, &by.name, now()],
            )
            .await?;
        if added == 0 {
            return Err(Conflict(format!("a user named `{name}` already exists")).into());
        }
        self.record(by, "user.add", name, &format!("role {}", role.name()))
            .await?;
        self.user(name).await
    }

    /// A user by name.
    pub async fn user(&self, name: &str) -> Result<User> {
        self.db
            .query_opt(&format!("{USER_COLUMNS} WHERE name = ?1"), params![name])
            .await?
            .map(|r| user_row(&r))
            .transpose()?
            .ok_or_else(|| NotFound(format!("there is no user named `{name}`")).into())
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<User>> {
        self.db
            .query(&format!("{USER_COLUMNS} ORDER BY name"), vec![])
            .await?
            .iter()
            .map(user_row)
            .collect()
    }

    /// Removes a user with their tokens and sessions. An administrator cannot remove
    /// themselves (someone must stay able to manage the rest).
    pub async fn remove_user(&self, by: &Actor, name: &str) -> Result<()> {
        if by.name == name {
            bail!("you cannot remove yourself; another administrator can");
        }
        self.user(name).await?;
        self.db
            .batch(&[
                super::db::Step::new("DELETE FROM api_tokens WHERE user_name = ?1", params![name]),
                super::db::Step::new("DELETE FROM sessions WHERE user_name = ?1", params![name]),
                super::db::Step::new("DELETE FROM users WHERE name = ?1", params![name]),
            ])
            .await?;
        self.record(by, "user.remove", name, "").await
    }

    /// Creates an API token for `user`: the token itself, shown once and never again.
    pub async fn create_token(&self, by: &Actor, user: &str, label: &str) -> Result<Secret> {
        self.user(user).await?;
        let token = format!("{TOKEN_PREFIX}{}", random_token());
        let id = token[TOKEN_PREFIX.len()..TOKEN_PREFIX.len() + 8].to_string();
        self.db
            .execute(
                "INSERT INTO api_tokens (token_hash, id, user_name, label, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![sha256_hex(&token), &id, user, label, &by.name, now()],
            )
            .await?;
        self.record(by, "token.create", user, &format!("token {id} `{label}`"))
            .await?;
        Ok(Secret::new(token))
    }

    /// Every API token (ids, never tokens).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.db
            .query(
                "SELECT id, user_name, label, created_by, created_at, last_used_at
                 FROM api_tokens ORDER BY created_at, id",
                vec![],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.get(0)?,
                    user: r.get(1)?,
                    label: r.get(2)?,
                    created_by: r.get(3)?,
                    created_at: r.get(4)?,
                    last_used_at: r.get(5)?,
                })
            })
            .collect()
    }

    /// Revokes the API token with this id.
    pub async fn revoke_token(&self, by: &Actor, id: &str) -> Result<()> {
        let gone = self
            .db
            .execute("DELETE FROM api_tokens WHERE id = ?1", params![id])
            .await?;
        if gone == 0 {
            return Err(NotFound(format!("there is no API token {id}")).into());
        }
        self.record(by, "token.revoke", id, "").await
    }

    /// Who an API token signs in, if it is one.
    pub async fn token_actor(&self, token: &str) -> Result<Option<Actor>> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let hash = sha256_hex(token);
        let row = self
            .db
            .query_opt(
                "SELECT u.name, u.role, t.last_used_at FROM api_tokens t
                 JOIN users u ON u.name = t.user_name WHERE t.token_hash = ?1",
                params![&hash],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        // Last use to the minute: a write per request would put the database on every
        // request's path.
        let now = now();
        let last: Option<String> = row.get(2)?;
        if last.as_deref().is_none_or(|l| l.get(..16) != now.get(..16)) {
            self.db
                .execute(
                    "UPDATE api_tokens SET last_used_at = ?2 WHERE token_hash = ?1",
                    params![&hash, now],
                )
                .await?;
        }
        Ok(Some(Actor {
            name: row.get(0)?,
            role: row.name(1)?,
        }))
    }

    /// Checks a user's password; a new session (its id, to put in a cookie) when right.
    /// Wrong name and wrong password are not told apart.
    pub async fn sign_in(
        &self,
        name: &str,
        password: &Secret,
    ) -> Result<Option<(Secret, Session)>> {
        let row = self
            .db
            .query_opt(
                "SELECT role, password_hash FROM users WHERE name = ?1",
                params![name],
            )
            .await?;
        let stored: Option<(Role, Option<String>)> = row
            .map(|r| Ok::<_, anyhow::Error>((r.name(0)?, r.get(1)?)))
            .transpose()?;
        // Without a user, verify against a fixed hash all the same, so that timing does not
        // tell which names exist.
        let hash = stored
            .as_ref()
            .and_then(|(_, h)| h.clone())
            .unwrap_or_else(|| DECOY_HASH.to_string());
        let parsed = PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
        let right = argon2::Argon2::default()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok();
        let Some((role, Some(_))) = stored.filter(|_| right) else {
            return Ok(None);
        };
        let id = random_token();
        let csrf = random_token();
        let expires = (chrono::Utc::now() + chrono::Duration::hours(SESSION_HOURS))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.db
            .execute(
                "INSERT INTO sessions (token_hash, user_name, csrf, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![sha256_hex(&id), name, &csrf, now(), expires],
            )
            .await?;
        let actor = Actor {
            name: name.to_string(),
            role,
        };
        Ok(Some((Secret::new(id), Session { actor, csrf })))
    }

    /// The live session with this id, if any.
    pub async fn session(&self, id: &str) -> Result<Option<Session>> {
        let row = self
            .db
            .query_opt(
                "SELECT u.name, u.role, s.csrf FROM sessions s JOIN users u ON u.name = s.user_name
                 WHERE s.token_hash = ?1 AND s.expires_at > ?2",
                params![sha256_hex(id), now()],
            )
            .await?;
        row.map(|r| {
            Ok(Session {
                actor: Actor {
                    name: r.get(0)?,
                    role: r.name(1)?,
                },
                csrf: r.get(2)?,
            })
        })
        .transpose()
    }

    /// Ends a session (and clears expired ones).
    pub async fn sign_out(&self, id: &str) -> Result<()> {
        self.db
            .execute(
                "DELETE FROM sessions WHERE token_hash = ?1 OR expires_at <= ?2",
                params![sha256_hex(id), now()],
            )
            .await?;
        Ok(())
    }

    /// Records a change: who, what, on what.
    pub async fn record(
        &self,
        actor: &Actor,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO audit_log (at, actor, role, action, subject, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    now(),
                    &actor.name,
                    actor.role.name(),
                    action,
                    subject,
                    detail
                ],
            )
            .await?;
        Ok(())
    }

    /// The latest `limit` changes, newest first.
    pub async fn audit_log(&self, limit: u64) -> Result<Vec<AuditEntry>> {
        self.db
            .query(
                "SELECT id, at, actor, role, action, subject, detail FROM audit_log
                 ORDER BY id DESC LIMIT ?1",
                params![limit],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    role: r.name(3)?,
                    action: r.get(4)?,
                    subject: r.get(5)?,
                    detail: r.get(6)?,
                })
            })
            .collect()
    }
}

/// An Argon2id hash of a random password nobody has, checked when the user does not exist.
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3RNMTNXcRNKPXPfBEGdzMyv2jYS1ezqhmPaP3KCVMEk";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoy_hash_parses() {
        PasswordHash::new(DECOY_HASH).unwrap();
    }

    #[test]
    fn tokens_are_random_and_long() {
        let a = random_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token());
    }
}
