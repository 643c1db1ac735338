//! Profiles from PostgreSQL, as a platform hands them over: an export reads its segment from
//! tables (or a query) in a real PostgreSQL database, streamed through a server-side cursor,
//! and delivers exactly what the same profiles in files deliver; rows it cannot use are
//! skipped and listed, as with files.

mod support;

use std::time::Duration;

use connector_tests::harness::Expected;
use connector_tests::sample;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_reads_its_segment_from_postgresql_tables_and_queries() {
    let (seed, count) = (93, 12_000);
    let url = connector_tests::postgres::database().await;
    sample::write_postgres(&url, seed, count).await.unwrap();
    // Rows a platform's data may hold: a repeated id, a profile without one, a membership
    // naming nobody. The query below unites them with the clean table.
    let member = (0..count)
        .map(|i| sample::profile(seed, i))
        .find(|p| p.segments.contains(&"newsletter") && p.email.is_some())
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "CREATE TABLE extra (id TEXT, email TEXT, first_name TEXT, last_name TEXT, city TEXT);
             INSERT INTO extra VALUES ('{}', 'twin@example.com', 'Twin', 'One', 'Oslo'),
                 (NULL, 'nobody@example.com', 'No', 'Id', 'Oslo');
             INSERT INTO memberships VALUES ('ghost', 'newsletter');",
            member.id
        ))
        .await
        .unwrap();

    let op = Operator::new(seed, 10);
    op.ok(&["settings", "set", "profiles", &url]);
    op.ok(&[
        "settings",
        "set",
        "profiles-table",
        "(SELECT * FROM profiles UNION ALL SELECT * FROM extra)",
    ]);
    op.ok(&["settings", "set", "memberships-table", "memberships"]);
    let shown = op.ok(&["settings", "show"]);
    assert!(shown.contains("memberships-table"), "{shown}");
    // A password is never stored in settings.
    let err = op.fails(&[
        "settings",
        "set",
        "profiles",
        "postgres://app:hunter2@127.0.0.1/profiles",
    ]);
    assert!(err.contains("without its password"), "{err}");
    let err = op.fails(&[
        "settings",
        "set",
        "profiles-table",
        "profiles; DROP TABLE x",
    ]);
    assert!(err.contains("neither a table or view name"), "{err}");

    let (sim, _, list) = vendor(Duration::ZERO).await;
    op.add_connection("acme", &sim, &[]);
    op.add_export("from-db", "acme", &list, &[]);
    let out = op.ok(&["export", "run", "from-db"]);
    let id = run_id(&out);

    let expected = Expected::for_segment(seed, count, "newsletter");
    let held = sim.subscribers(&list);
    assert_eq!(held.len(), expected.delivered.len(), "{out}");
    // One of the two rows of the repeated id is used (the query does not order them).
    let original = member.email.unwrap().to_lowercase();
    assert!(
        held.contains_key(&original) != held.contains_key("twin@example.com"),
        "one row of the repeated id is sent"
    );
    for (email, profile) in &expected.delivered {
        if *email == original {
            continue;
        }
        let subscriber = held.get(email).unwrap_or_else(|| panic!("{email} missing"));
        assert_eq!(
            subscriber.name,
            format!(
                "{} {}",
                profile.first_name.as_deref().unwrap_or(""),
                profile.last_name
            )
            .trim(),
            "{email}"
        );
    }
    assert!(
        !held.contains_key("twin@example.com"),
        "the first row of id 1 is used"
    );

    let show = op.ok(&["runs", "show", &id]);
    assert_eq!(field(&show, "status"), "succeeded", "{show}");
    assert_eq!(field(&show, "repeated ids"), "1", "{show}");
    assert_eq!(field(&show, "unknown profiles"), "1", "{show}");
    assert_eq!(
        field(&show, "rows read"),
        (expected.profiles + 2).to_string(),
        "the members, the repeated id's second row and the ghost: {show}"
    );
    let csv = op.ok(&["runs", "rejections", &id, "--csv"]);
    assert!(
        csv.contains(
            "the membership names profile `ghost`, which the profiles table does not have"
        ),
        "{csv}"
    );
    assert!(
        csv.contains(&format!("repeats profile id `{}`", member.id)),
        "{csv}"
    );
    op.assert_credential_nowhere();
}
