//! The API end to end on the Campaign Monitor simulator, its role matrix, and the operations
//! endpoints.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_saves_runs_and_reports_exports_with_roles_enforced() {
    let (sim, _client, list) = vendor(Duration::ZERO).await;
    let w = world();
    let (admin, contributor) = (Some(w.admin.as_str()), Some(w.contributor.as_str()));

    // Connections: administrators only, the privacy notice required.
    let connection = |name: &str, access: &str, privacy: bool| {
        json!({"name": name, "connector": "campaign-monitor", "api_key": API_KEY,
            "base_url": sim.base_url(), "access": access, "accept_privacy_notice": privacy})
    };
    let (status, problem) = w
        .call(
            admin,
            "POST",
            "/api/v1/connections",
            Some(connection("acme", "contributors", false)),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("privacy notice"),
        "{problem}"
    );
    let (status, _) = w
        .call(
            contributor,
            "POST",
            "/api/v1/connections",
            Some(connection("acme", "contributors", true)),
        )
        .await;
    assert_eq!(status, 403);
    let (status, saved) = w
        .call(
            admin,
            "POST",
            "/api/v1/connections",
            Some(connection("acme", "contributors", true)),
        )
        .await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["credential"], "api-key");
    assert!(!saved.to_string().contains(API_KEY));
    let (status, _) = w
        .call(
            admin,
            "POST",
            "/api/v1/connections",
            Some(connection("acme", "contributors", true)),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = w
        .call(
            admin,
            "POST",
            "/api/v1/connections",
            Some(connection("private", "administrators", true)),
        )
        .await;
    assert_eq!(status, 201);

    // A contributor sees only what is opened to contributors.
    let (_, listed) = w
        .call(contributor, "GET", "/api/v1/connections", None)
        .await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme"]);
    let (status, _) = w
        .call(contributor, "GET", "/api/v1/connections/private", None)
        .await;
    assert_eq!(status, 404);

    // An export by the contributor, run now, followed to the end.
    let export = |name: &str, connection: &str| {
        json!({"name": name, "connection": connection, "settings": {"list-id": list},
            "mapping": {"email": "email", "first-name": "first_name", "last-name": "last_name"},
            "segments": ["newsletter"]})
    };
    let (status, problem) = w
        .call(
            contributor,
            "POST",
            "/api/v1/exports",
            Some(export("weekly", "private")),
        )
        .await;
    assert_eq!(status, 404, "{problem}");
    let (status, saved) = w
        .call(
            contributor,
            "POST",
            "/api/v1/exports",
            Some(export("weekly", "acme")),
        )
        .await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["mapping"]["first-name"], "first_name");
    let (status, plan) = w
        .call(
            contributor,
            "POST",
            "/api/v1/exports/weekly/dry-run",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert!(sim.subscribers(&list).is_empty(), "a dry run sends nothing");
    let (status, queued) = w
        .call(
            contributor,
            "POST",
            "/api/v1/exports/weekly/runs",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["run_id"].as_i64().unwrap();

    // Live progress as server-sent events, ending with the run.
    let events = client()
        .get(format!("{}/api/v1/runs/{id}/events", w.server.url))
        .bearer_auth(&w.contributor)
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let stream = tokio::time::timeout(Duration::from_secs(120), events.text())
        .await
        .expect("the event stream ends with the run")
        .unwrap();
    assert!(stream.contains("event: end"), "{stream}");

    let run = w.finished(id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["started_by"], "cy");
    let created = run["counts"]["created"].as_u64().unwrap();
    assert!(created > 0);
    assert_eq!(created as usize, sim.subscribers(&list).len());

    // Its undelivered contacts as CSV: a header, then one line per contact not delivered.
    let csv = client()
        .get(format!("{}/api/v1/runs/{id}/rejections", w.server.url))
        .bearer_auth(&w.contributor)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    assert!(
        csv.starts_with("profile_id,email,kind,stage,code,message,since"),
        "{csv}"
    );
    assert!(csv.lines().count() > 1, "the sample data has bad rows");
    // The same list the CLI gives.
    assert_eq!(
        csv,
        w.op.ok(&["runs", "rejections", &id.to_string(), "--csv"])
    );

    // The role matrix: every endpoint without a token, with a wrong one, as a contributor
    // and as an administrator.
    let matrix: &[(&str, &str, Option<Value>, u16, u16)] = &[
        // method, path, body, contributor, administrator
        ("GET", "/api/v1/me", None, 200, 200),
        ("GET", "/api/v1/connectors", None, 200, 200),
        (
            "POST",
            "/api/v1/connectors/campaign-monitor/approve",
            None,
            403,
            200,
        ),
        ("GET", "/api/v1/connections", None, 200, 200),
        ("GET", "/api/v1/connections/acme", None, 200, 200),
        ("GET", "/api/v1/connections/private", None, 404, 200),
        ("POST", "/api/v1/connections/acme/test", None, 204, 204),
        (
            "PATCH",
            "/api/v1/connections/acme",
            Some(json!({"access": "contributors"})),
            403,
            200,
        ),
        ("GET", "/api/v1/exports", None, 200, 200),
        ("GET", "/api/v1/exports/weekly", None, 200, 200),
        (
            "PATCH",
            "/api/v1/exports/weekly",
            Some(json!({"schedule": "0 6 * * 1"})),
            200,
            200,
        ),
        ("GET", "/api/v1/runs", None, 200, 200),
        (
            "GET",
            Box::leak(format!("/api/v1/runs/{id}").into_boxed_str()),
            None,
            200,
            200,
        ),
        ("POST", "/api/v1/runs/999999/cancel", None, 404, 404),
        ("DELETE", "/api/v1/connections/private", None, 403, 204),
    ];
    for (i, (method, path, body, as_contributor, as_admin)) in matrix.iter().enumerate() {
        let (status, _) = w.call(None, method, path, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        // A wrong token is a failed sign-in: the matrix tries it on as many endpoints as
        // the limit allows (the limit itself is tested below).
        if i < 9 {
            let (status, _) = w
                .call(Some("cht_not-a-token"), method, path, body.clone())
                .await;
            assert_eq!(status, 401, "{method} {path} with a wrong token");
        }
        let (status, answer) = w.call(contributor, method, path, body.clone()).await;
        assert_eq!(
            status.as_u16(),
            *as_contributor,
            "{method} {path} as a contributor: {answer}"
        );
        let (status, answer) = w.call(admin, method, path, body.clone()).await;
        assert_eq!(
            status.as_u16(),
            *as_admin,
            "{method} {path} as an administrator: {answer}"
        );
    }

    // Operations.
    let get = |path: &str| client().get(format!("{}{path}", w.server.url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"connector_host_runs_total{connector="campaign-monitor",outcome="succeeded"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        r#"connector_host_contacts_total{{connector="campaign-monitor",outcome="created"}} {created}"#
    )));
    assert!(metrics.contains("connector_host_vendor_request_seconds_bucket"));
    let doc: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/exports/{name}/runs"]["post"].is_object());

    // Every change is in the audit log with who made it; tokens are stored only as hashes.
    let audit: Value = serde_json::from_str(&w.op.ok(&["audit", "--json"])).unwrap();
    let entries: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["subject"].as_str().unwrap().into(),
            )
        })
        .collect();
    for expected in [
        ("ada", "connection.add", "acme"),
        ("cy", "export.add", "weekly"),
        ("cy", "export.edit", "weekly"),
        ("ada", "connection.remove", "private"),
    ] {
        assert!(
            entries
                .iter()
                .any(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()) == expected),
            "{expected:?} missing from {entries:?}"
        );
    }
    // (The tokens themselves are in the test's log of command output, where `tokens create`
    // showed them once; the state must not hold them.)
    let mut files = vec![];
    walk(&w.op.path("state"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for secret in [&w.admin, &w.contributor, ADMIN_PASSWORD, API_KEY] {
            assert!(
                !bytes.windows(secret.len()).any(|s| s == secret.as_bytes()),
                "{} holds a secret",
                file.display()
            );
        }
    }

    // One wrong token more reaches the limit of failed sign-ins from this address: the next
    // wrong one is told to wait, while a valid token still works.
    let (status, _) = w.call(Some("cht_guess"), "GET", "/api/v1/me", None).await;
    assert_eq!(status, 401);
    let (status, problem) = w.call(Some("cht_guess"), "GET", "/api/v1/me", None).await;
    assert_eq!(status, 429, "{problem}");
    let (status, me) = w.call(admin, "GET", "/api/v1/me", None).await;
    assert_eq!(status, 200, "{me}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_approves_the_file_on_disk_and_only_the_digest_reviewed() {
    let w = world_of(Operator::new(43, 20));
    let admin = Some(w.admin.as_str());
    let digest_of = |connectors: &Value| {
        connectors
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "campaign-monitor")
            .map(|c| {
                (
                    c["sha256"].as_str().unwrap().to_string(),
                    c["approval"].clone(),
                )
            })
            .unwrap()
    };
    let (_, listed) = w.call(admin, "GET", "/api/v1/connectors", None).await;
    let (started_with, approval) = digest_of(&listed);
    assert_eq!(approval, "approved");

    // The file is replaced while the server runs: the server lists what is on disk now.
    let plugins = w.op.path("plugins");
    connector_tests::hostile::variant(
        &plugins,
        "campaign-monitor.wasm",
        json!({"id": "campaign-monitor", "display_name": "Campaign Monitor (replaced)"}),
    );
    let on_disk = connector_host::plugins::digest(
        &std::fs::read(plugins.join("campaign-monitor.wasm")).unwrap(),
    );
    let (_, listed) = w.call(admin, "GET", "/api/v1/connectors", None).await;
    let (now, approval) = digest_of(&listed);
    assert_eq!(now, on_disk, "the server listed a stale copy");
    assert_eq!(approval, "changed");

    // Approving what was reviewed before the change is refused, and changes nothing.
    let (status, problem) = w
        .call(
            admin,
            "POST",
            "/api/v1/connectors/campaign-monitor/approve",
            Some(json!({"digest": started_with})),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains(&format!(
            "its file is sha256:{on_disk}, not the sha256:{started_with} that was reviewed"
        )),
        "{problem}"
    );
    let (_, listed) = w.call(admin, "GET", "/api/v1/connectors", None).await;
    assert_eq!(digest_of(&listed).1, "changed");

    // The digest of the file on disk is approved, and that file is what the server holds.
    let (status, approved) = w
        .call(
            admin,
            "POST",
            "/api/v1/connectors/campaign-monitor/approve",
            Some(json!({"digest": on_disk})),
        )
        .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["sha256"], on_disk.as_str());
    assert_eq!(approved["approval"], "approved");
    assert_eq!(approved["display_name"], "Campaign Monitor (replaced)");
}
