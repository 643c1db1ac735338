//! The OpenAPI document checked by schemathesis against the running server.

use super::*;

/// The schemathesis command: `SCHEMATHESIS`, else the virtual environment `.ci/run` makes, else
/// the one on PATH.
fn schemathesis() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return path.into();
    }
    let venv = std::path::Path::new("/opt/schemathesis/bin/schemathesis");
    if venv.is_file() {
        return venv.into();
    }
    "schemathesis".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let (sim, _client, list) = vendor(Duration::ZERO).await;
    let w = world();
    // Something to find: a connection, an export and a finished run.
    let connection = json!({"name": "acme", "connector": "campaign-monitor", "api_key": API_KEY,
        "base_url": sim.base_url(), "access": "contributors", "accept_privacy_notice": true});
    let (status, _) = w
        .call(
            Some(&w.admin),
            "POST",
            "/api/v1/connections",
            Some(connection),
        )
        .await;
    assert_eq!(status, 201);
    let export = json!({"name": "weekly", "connection": "acme", "settings": {"list-id": list},
        "mapping": {"email": "email"}, "segments": ["newsletter"]});
    let (status, _) = w
        .call(Some(&w.admin), "POST", "/api/v1/exports", Some(export))
        .await;
    assert_eq!(status, 201);
    let (_, queued) = w
        .call(
            Some(&w.admin),
            "POST",
            "/api/v1/exports/weekly/runs",
            Some(json!({})),
        )
        .await;
    w.finished(queued["run_id"].as_i64().unwrap()).await;

    let report = env!("CARGO_TARGET_TMPDIR");
    let junit = format!("{report}/schemathesis.xml");
    let command = std::process::Command::new(schemathesis())
        .args([
            "run",
            &format!("{}/openapi.json", w.server.url),
            "--header",
            &format!("Authorization: Bearer {}", w.admin),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            // These dial the vendor account a generated body names (api.createsend.com...):
            // tests reach loopback only. The end-to-end tests above cover them.
            "--exclude-operation-id",
            "add_connection",
            "--exclude-operation-id",
            "update_connection",
            "--exclude-operation-id",
            "test_connection",
            "--max-examples",
            "25",
            "--phases",
            "examples,coverage,fuzzing",
            "--report",
            "junit",
            "--report-junit-path",
            &junit,
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its cache of past failures (`.schemathesis/`) goes beside the report, not into the tree.
        .current_dir(report)
        .output();
    let out = tokio::task::spawn_blocking(move || command)
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("schemathesis could not start ({e}): `.ci/run` installs it (pip install schemathesis into /opt/schemathesis), or set SCHEMATHESIS")
        });
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        text(&out.stderr)
    );
}
