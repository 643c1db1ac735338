//! People: users and their API tokens (administrators manage them), sign-in sessions, and
//! the audit log every change is written to.

use anyhow::Result;

use super::Workspace;
use crate::access::{Actor, Operation, Role};
use crate::secret::Secret;
use crate::state::{Session, TokenInfo, User};

impl Workspace {
    /// Adds a user. `actor` is who adds it: an administrator, or [`Role::operator`] for
    /// whoever holds this state (the CLI: how the first administrator is made).
    pub async fn add_user(
        &self,
        actor: &Actor,
        name: &str,
        role: Role,
        password: Option<&Secret>,
    ) -> Result<User> {
        actor.require(Operation::ManagePeople, "add users")?;
        self.state.add_user(actor, name, role, password).await
    }

    /// Every user, by name.
    pub async fn users(&self, actor: &Actor) -> Result<Vec<User>> {
        actor.require(Operation::ManagePeople, "list users")?;
        self.state.users().await
    }

    /// Removes a user with their tokens and sessions (never oneself).
    pub async fn remove_user(&self, actor: &Actor, name: &str) -> Result<()> {
        actor.require(Operation::ManagePeople, "remove users")?;
        self.state.remove_user(actor, name).await
    }

    /// Creates an API token for `user`: the token itself, shown once and never again.
    pub async fn create_token(&self, actor: &Actor, user: &str, label: &str) -> Result<Secret> {
        actor.require(Operation::ManagePeople, "create API tokens")?;
        self.state.create_token(actor, user, label).await
    }

    /// Every API token (ids, never tokens).
    pub async fn tokens(&self, actor: &Actor) -> Result<Vec<TokenInfo>> {
        actor.require(Operation::ManagePeople, "list API tokens")?;
        self.state.tokens().await
    }

    /// Revokes the API token with this id.
    pub async fn revoke_token(&self, actor: &Actor, id: &str) -> Result<()> {
        actor.require(Operation::ManagePeople, "revoke API tokens")?;
        self.state.revoke_token(actor, id).await
    }

    /// Who an API token signs in, if it is one.
    pub async fn token_actor(&self, token: &str) -> Result<Option<Actor>> {
        self.state.token_actor(token).await
    }

    /// Checks a user's password; a new session (its id, for a cookie) when right. A wrong
    /// name and a wrong password are not told apart.
    pub async fn sign_in(
        &self,
        name: &str,
        password: &Secret,
    ) -> Result<Option<(Secret, Session)>> {
        self.state.sign_in(name, password).await
    }

    /// The live session with this id, if any.
    pub async fn session(&self, id: &str) -> Result<Option<Session>> {
        self.state.session(id).await
    }

    /// Ends a session.
    pub async fn sign_out(&self, id: &str) -> Result<()> {
        self.state.sign_out(id).await
    }

    /// Writes a change made outside the workspace's own operations (a run cancelled on a
    /// server) to the audit log.
    pub async fn record_change(
        &self,
        actor: &Actor,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<()> {
        self.state.record(actor, action, subject, detail).await
    }
}
