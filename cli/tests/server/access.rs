//! One access rule, three faces: every operation of the rule's table (`Operation::ALL`), for
//! each role, asked of the library, of the command line and of the API, each answering as the
//! rule says (the API only where it offers the operation).

use std::sync::Arc;

use connector_host::failure::{self, Closed, Forbidden};
use connector_host::workspace::ConnectionChanges;
use connector_host::{Access, Actor, Operation, Role, Workspace};
use connector_tests::harness::open_host;

use super::*;

/// How one face answered: done, or refused (and how, in its own terms).
#[derive(Debug, PartialEq)]
enum Answer {
    Done,
    Refused,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_the_command_line_and_the_api_ask_the_same_rule() {
    let (sim, _client, list) = vendor(Duration::ZERO).await;
    let w = world();
    w.op.add_connection("open", &sim, &["--contributors"]);
    w.op.add_connection("closed", &sim, &[]);
    w.op.add_export("on-open", "open", &list, &[]);
    w.op.add_export("on-closed", "closed", &list, &[]);
    // The library, in this process, over the same state and plugin directory.
    let workspace = Workspace::open(w.op.path("state").to_str().unwrap(), None)
        .await
        .unwrap()
        .with_host(Arc::new(open_host(&w.op.path("plugins")).await));

    let mut table = vec![];
    for (role, name, token) in [
        (Role::Administrator, "ada", &w.admin),
        (Role::Contributor, "cy", &w.contributor),
    ] {
        let actor = Actor {
            name: name.into(),
            role,
        };
        for operation in Operation::ALL {
            let expected = if actor.may(operation) {
                Answer::Done
            } else {
                Answer::Refused
            };
            let library = library(&workspace, &actor, operation).await;
            let cli = command_line(&w.op, role, operation);
            let api = api(&w, token, operation).await;
            table.push(format!(
                "{:<12} {:<50} library {library:?}, CLI {cli:?}, API {api:?}",
                role.name(),
                operation.words()
            ));
            assert_eq!(library, expected, "library: {role:?} {operation:?}");
            assert_eq!(cli, expected, "CLI: {role:?} {operation:?}");
            if let Some(api) = api {
                assert_eq!(api, expected, "API: {role:?} {operation:?}");
            }
        }
    }
    println!("{}", table.join("\n"));
}

/// The operation asked of the library; a refusal must be the rule's own.
async fn library(workspace: &Workspace, actor: &Actor, operation: Operation) -> Answer {
    let outcome = match operation {
        Operation::ApproveConnectors => workspace
            .approve_connector(actor, "campaign-monitor", None)
            .await
            .map(drop),
        Operation::ManageConnections => workspace
            .update_connection(
                actor,
                "closed",
                ConnectionChanges {
                    access: Some(Access::Administrators),
                    ..ConnectionChanges::default()
                },
            )
            .await
            .map(drop),
        Operation::ManagePeople => workspace.users(actor).await.map(drop),
        Operation::ChangeSettings => workspace
            .set_setting(actor, "max-profiles", "1000000")
            .await
            .map(drop),
        Operation::ReadAuditLog => workspace.audit_log(actor, 5).await.map(drop),
        Operation::UseConnection(access) => {
            workspace.export(actor, export_on(access)).await.map(drop)
        }
    };
    match outcome {
        Ok(()) => Answer::Done,
        Err(e) if failure::is::<Forbidden>(&e) || failure::is::<Closed>(&e) => Answer::Refused,
        Err(e) => panic!("{operation:?} failed otherwise: {e:#}"),
    }
}

/// The operation asked of the command line, acting in `role`; a refusal is a usage error
/// that names who may.
fn command_line(op: &Operator, role: Role, operation: Operation) -> Answer {
    let args: &[&str] = match operation {
        Operation::ApproveConnectors => &["plugins", "approve", "campaign-monitor"],
        Operation::ManageConnections => {
            &["connection", "update", "closed", "--administrators-only"]
        }
        Operation::ManagePeople => &["users", "list"],
        Operation::ChangeSettings => &["settings", "set", "max-profiles", "1000000"],
        Operation::ReadAuditLog => &["audit"],
        Operation::UseConnection(access) => &["export", "show", export_on(access)],
    };
    let mut full = vec!["--as", role.name()];
    full.extend_from_slice(args);
    let (code, _, stderr) = op.code(&full);
    match code {
        0 => Answer::Done,
        2 if stderr.contains("only administrators may")
            || stderr.contains("is open to administrators only") =>
        {
            Answer::Refused
        }
        _ => panic!("{full:?} ended {code}: {stderr}"),
    }
}

/// The operation asked of the API with `token`, where it offers it: a refusal is 403 for
/// what only administrators do, 404 for what is closed (as if it did not exist).
async fn api(w: &World, token: &str, operation: Operation) -> Option<Answer> {
    let (method, path, body, refused) = match operation {
        Operation::ApproveConnectors => (
            "POST",
            "/api/v1/connectors/campaign-monitor/approve".to_string(),
            None,
            403,
        ),
        Operation::ManageConnections => (
            "PATCH",
            "/api/v1/connections/closed".to_string(),
            Some(json!({"access": "administrators"})),
            403,
        ),
        Operation::UseConnection(access) => (
            "GET",
            format!("/api/v1/exports/{}", export_on(access)),
            None,
            404,
        ),
        Operation::ManagePeople | Operation::ChangeSettings | Operation::ReadAuditLog => {
            return None;
        }
    };
    let (status, answer) = w.call(Some(token), method, &path, body).await;
    Some(match status.as_u16() {
        200..=299 => Answer::Done,
        code if code == refused => Answer::Refused,
        code => panic!("{method} {path} answered {code}: {answer}"),
    })
}

fn export_on(access: Access) -> &'static str {
    match access {
        Access::Administrators => "on-closed",
        Access::Contributors => "on-open",
    }
}
