//! The SDK's pieces, in native test mode: a small connector written as an author would, its
//! requests answered by a script.

use cdp_connector_sdk::testing::{self, Vendor};
use cdp_connector_sdk::*;
use serde::Deserialize;

struct Acme;

const BASE: &str = "https://api.acme.example/v1";

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Settings {
    list_id: String,
    #[serde(default)]
    tag: Option<String>,
}

impl Connector for Acme {
    const NAME: &'static str = "Acme Mail";
    const CREDENTIAL_CHECK: &'static str = "/me";
    type Settings = Settings;

    fn describe() -> ConnectorInfo {
        Description::new("acme", Self::NAME, "1.2.3")
            .base_url("https://{dc}.api.acme.example/v1")
            .setting("list-id", "List ID", "The list.")
            .optional_setting("tag", "Tag", "A tag.")
            .field("first-name", "First name", 50)
            .custom_fields(100)
            .leave_action("forget", "Forget", "Removes them.", true)
            .max_batch_size(2)
            .build()
    }

    fn validate(export: &Export<Settings>) -> Result<(), ConnectorError> {
        let answer = http::get(&export.url(&format!("/lists/{}", export.settings.list_id)))?;
        match answer.is_success() {
            true => Ok(()),
            false => Err(Self::vendor_error(&answer)),
        }
    }

    fn export_batch(
        export: &Export<Settings>,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        let body = serde_json::json!({
            "emails": contacts.iter().map(|c| c.email.as_str()).collect::<Vec<_>>(),
            "tag": export.settings.tag,
            "custom": export.custom_fields().collect::<Vec<_>>(),
        });
        let answer = http::post_json(&export.url("/import"), &body)?;
        if !answer.is_success() {
            return Err(Self::vendor_error(&answer));
        }
        #[derive(Deserialize)]
        struct Imported {
            created: u32,
            updated: u32,
            refused: Vec<String>,
        }
        let imported: Imported = answer.json()?;
        let mut report = ReportBuilder::new(Self::NAME, contacts);
        for email in &imported.refused {
            report.issue(email, IssueKind::Rejected, "bad", "Refused")?;
        }
        report.finish(imported.created, imported.updated)
    }

    fn apply_leave_action(
        _: &Export<Settings>,
        _: &str,
        contacts: &[Contact],
    ) -> Result<BatchReport, ConnectorError> {
        // Wrong on purpose: counts one contact too few.
        Ok(BatchReport {
            created: 0,
            updated: contacts.len() as u32 - 1,
            issues: vec![],
        })
    }
}

fn export() -> ExportConfig {
    testing::config(BASE)
        .with_setting("list-id", "L1")
        .mapping(&["first-name", "shoe-size"])
}

#[test]
fn the_description_starts_with_email_and_takes_its_host_from_the_base_url() {
    let info = testing::describe::<Acme>();
    assert_eq!(info.hosts, ["*.api.acme.example"]);
    assert_eq!(info.contact_fields[0].key, "email");
    assert!(info.contact_fields[0].required);
    assert_eq!(info.contact_fields[0].max_length, MAX_EMAIL_LENGTH);
    assert_eq!(info.config_fields.len(), 2);
    assert!(info.config_fields[0].required && !info.config_fields[1].required);
    assert!(info.custom_fields);
    assert_eq!(info.custom_field_max_length, 100);
}

#[test]
fn validate_without_settings_checks_the_credential_and_maps_each_status() {
    for (status, kind, retryable) in [
        (401, ErrorKind::Unauthorized, false),
        (403, ErrorKind::Unauthorized, false),
        (404, ErrorKind::NotFound, false),
        (429, ErrorKind::RateLimited, true),
        (500, ErrorKind::Vendor, true),
        (503, ErrorKind::Vendor, true),
        (400, ErrorKind::Vendor, false),
    ] {
        let vendor = Vendor::new().answer(
            "GET",
            &format!("{BASE}/me"),
            status,
            r#"{"error": {"message": "Nope, not that"}}"#,
        );
        let error = vendor
            .run(|| testing::validate::<Acme>(testing::config(BASE)))
            .unwrap_err();
        assert_eq!((error.kind, error.retryable), (kind, retryable), "{status}");
        assert!(error.message.contains("Acme Mail"), "{}", error.message);
        assert!(
            error.message.contains("Nope, not that"),
            "{}",
            error.message
        );
        assert_eq!(
            error.vendor_code.as_deref(),
            Some(status.to_string().as_str())
        );
    }
    let vendor = Vendor::new().answer("GET", &format!("{BASE}/me"), 200, "{}");
    vendor
        .run(|| testing::validate::<Acme>(testing::config(BASE)))
        .unwrap();
}

#[test]
fn settings_are_read_and_a_missing_one_is_named() {
    // Only optional settings given: the required one is named, and nothing is sent.
    let config = testing::config(BASE).with_setting("tag", "vip");
    let error = Vendor::new()
        .run(|| testing::validate::<Acme>(config))
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::InvalidConfig);
    assert_eq!(error.message, "the setting `list-id` is required");
    // A blank value is no value.
    let config = testing::config(BASE)
        .with_setting("list-id", "  ")
        .with_setting("tag", "x");
    let error = Vendor::new()
        .run(|| testing::validate::<Acme>(config))
        .unwrap_err();
    assert_eq!(error.message, "the setting `list-id` is required");
    // Given: the connector sees it trimmed.
    let vendor = Vendor::new().answer("GET", &format!("{BASE}/lists/L1"), 200, "{}");
    let config = testing::config(BASE).with_setting("list-id", " L1 ");
    vendor.run(|| testing::validate::<Acme>(config)).unwrap();
}

#[test]
fn a_batch_is_sent_as_built_and_its_answer_read_into_one_outcome_a_contact() {
    let vendor = Vendor::new().answer(
        "POST",
        &format!("{BASE}/import"),
        200,
        r#"{"created": 1, "updated": 0, "refused": ["BAD@x.example"]}"#,
    );
    let contacts = vec![Contact::new("ada@x.example"), Contact::new("bad@x.example")];
    let report = vendor
        .run(|| testing::export_batch::<Acme>(export(), contacts))
        .unwrap();
    assert_eq!((report.created, report.updated), (1, 0));
    assert_eq!(report.issues.len(), 1);
    assert_eq!(report.issues[0].index, 1);
    let sent = vendor.sent();
    assert_eq!(sent.len(), 1);
    let body = sent[0].json();
    assert_eq!(body["emails"][1], "bad@x.example");
    // The custom fields are the mapped ones the connector did not declare.
    assert_eq!(body["custom"], serde_json::json!(["shoe-size"]));
    assert!(
        sent[0]
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/json"))
    );
}

#[test]
fn the_sdk_guards_batch_sizes_and_leave_actions_before_any_request() {
    // Empty: answered without a request.
    let report = Vendor::new()
        .run(|| testing::export_batch::<Acme>(export(), vec![]))
        .unwrap();
    assert_eq!(
        (report.created, report.updated, report.issues.len()),
        (0, 0, 0)
    );
    // Over the declared size: refused by name.
    let three = vec![
        Contact::new("a@x.example"),
        Contact::new("b@x.example"),
        Contact::new("c@x.example"),
    ];
    let error = Vendor::new()
        .run(|| testing::export_batch::<Acme>(export(), three.clone()))
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::InvalidConfig);
    assert!(error.message.contains("limit of 2"), "{}", error.message);
    // An undeclared leave action.
    let error = Vendor::new()
        .run(|| testing::apply_leave_action::<Acme>(export(), "delete", three[..1].to_vec()))
        .unwrap_err();
    assert_eq!(
        error.message,
        "Acme Mail has no leave action `delete` (it has: forget)"
    );
}

#[test]
fn a_report_that_loses_a_contact_is_an_error_not_a_miscount() {
    let two = vec![Contact::new("a@x.example"), Contact::new("b@x.example")];
    let error = Vendor::new()
        .run(|| testing::apply_leave_action::<Acme>(export(), "forget", two))
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Internal);
    assert!(
        error.message.contains("accounted for 1 of 2"),
        "{}",
        error.message
    );
}

#[test]
fn transport_failures_reach_the_connector_as_retryable_transport_errors() {
    let vendor = Vendor::new().fail("GET", &format!("{BASE}/me"), "timed out");
    let error = vendor
        .run(|| testing::validate::<Acme>(testing::config(BASE)))
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Transport);
    assert!(error.retryable);
}

#[test]
#[should_panic(expected = "where the script expected GET https://api.acme.example/v1/lists/L1")]
fn a_request_other_than_the_scripted_one_fails_the_test_by_name() {
    let vendor = Vendor::new().answer("GET", &format!("{BASE}/lists/L1"), 200, "{}");
    let _ = vendor.run(|| testing::validate::<Acme>(testing::config(BASE)));
}
