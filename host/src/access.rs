//! Who may see and change what: the one rule. Every operation of the workspace asks it before
//! it reads or writes; the CLI, the API and the console hold no rule of their own, they only
//! word its refusals (as Zed keeps one capability granter that everything else asks).

use serde::{Deserialize, Serialize};

use crate::failure::{Closed, Forbidden};

/// Who acts: a name for the record, and a role for permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: Role,
}

/// The two roles of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Manages connectors, connections, people and settings, and may use every connection.
    Administrator,
    /// Builds and runs exports over the connections opened to contributors.
    Contributor,
}

/// Who may attach a connection to an export and run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Administrators only (the default).
    Administrators,
    /// Administrators and contributors.
    Contributors,
}

/// What an actor may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Approve or revoke a connector.
    ApproveConnectors,
    /// Add, change or remove a connection (its credential, who may use it); set the OAuth
    /// application a vendor's sign-in uses.
    ManageConnections,
    /// Add and remove people and their API tokens.
    ManagePeople,
    /// Change the workspace's settings (the profile source, the limits).
    ChangeSettings,
    /// Read the audit log.
    ReadAuditLog,
    /// See a connection with this access and test it; see, save, change, run and remove its
    /// exports; see their runs and what those did not deliver.
    UseConnection(Access),
}

impl Operation {
    /// Every operation, for tables of who may do what.
    pub const ALL: [Operation; 7] = [
        Operation::ApproveConnectors,
        Operation::ManageConnections,
        Operation::ManagePeople,
        Operation::ChangeSettings,
        Operation::ReadAuditLog,
        Operation::UseConnection(Access::Administrators),
        Operation::UseConnection(Access::Contributors),
    ];

    /// The operation in words, to follow "may".
    pub fn words(self) -> &'static str {
        match self {
            Operation::ApproveConnectors => "approve or revoke connectors",
            Operation::ManageConnections => "add, change or remove connections",
            Operation::ManagePeople => "manage people and API tokens",
            Operation::ChangeSettings => "change settings",
            Operation::ReadAuditLog => "read the audit log",
            Operation::UseConnection(Access::Administrators) => {
                "use connections open to administrators only"
            }
            Operation::UseConnection(Access::Contributors) => {
                "use connections open to contributors"
            }
        }
    }
}

impl Role {
    /// The role's name, as stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::Contributor => "contributor",
        }
    }

    /// The actor standing for this machine's operator: whoever holds the state and the master
    /// key (the CLI's commands on people, which need no sign-in).
    pub fn operator() -> Actor {
        Actor {
            name: "operator".into(),
            role: Role::Administrator,
        }
    }
}

impl Actor {
    /// The rule: administrators may do everything; contributors may use the connections
    /// opened to them (and what hangs off them), nothing else.
    pub fn may(&self, operation: Operation) -> bool {
        match (self.role, operation) {
            (Role::Administrator, _) => true,
            (Role::Contributor, Operation::UseConnection(access)) => access == Access::Contributors,
            (Role::Contributor, _) => false,
        }
    }

    /// Refuses what the rule does not allow; `to` says what was asked, in words.
    pub fn require(&self, operation: Operation, to: &str) -> Result<(), Forbidden> {
        if self.may(operation) {
            return Ok(());
        }
        Err(Forbidden(format!(
            "{} acts as a {}; only administrators may {to}",
            self.name,
            self.role.name()
        )))
    }

    /// Refuses the use of a connection the rule closes to this actor; `name` is the
    /// connection's. Front ends word the refusal: the CLI says why, the API answers as if the
    /// connection did not exist.
    pub fn require_use(&self, access: Access, name: &str) -> Result<(), Closed> {
        if self.may(Operation::UseConnection(access)) {
            return Ok(());
        }
        Err(Closed {
            actor: self.name.clone(),
            connection: name.to_string(),
            subject: format!("connection named `{name}`"),
        })
    }
}

impl Access {
    /// Whether someone with `role` may use a connection with this access.
    pub fn permits(self, role: Role) -> bool {
        Actor {
            name: String::new(),
            role,
        }
        .may(Operation::UseConnection(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule as a table: role x operation.
    #[test]
    fn administrators_may_do_everything_and_contributors_use_what_is_opened_to_them() {
        let actor = |role| Actor {
            name: "x".into(),
            role,
        };
        for operation in Operation::ALL {
            assert!(actor(Role::Administrator).may(operation), "{operation:?}");
            assert_eq!(
                actor(Role::Contributor).may(operation),
                operation == Operation::UseConnection(Access::Contributors),
                "{operation:?}"
            );
        }
        let refused = actor(Role::Contributor)
            .require(Operation::ManagePeople, "add users")
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "x acts as a contributor; only administrators may add users"
        );
        let closed = actor(Role::Contributor)
            .require_use(Access::Administrators, "acme")
            .unwrap_err();
        assert_eq!(closed.connection, "acme");
    }
}
