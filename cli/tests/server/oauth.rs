//! "Authenticate with <vendor>" for both vendors, through the console's forms over HTTP.

use super::*;

/// The console's "Authenticate with <vendor>": sign in, start, allow at the vendor, back.
async fn authenticate(w: &World, connector: &str, name: &str) -> reqwest::Response {
    let browser = client();
    let url = &w.server.url;
    sign_in(&browser, url, "ada", ADMIN_PASSWORD).await;
    let page = text_of(&browser, &format!("{url}/connections")).await;
    assert!(page.contains("Authenticate with"), "{page}");
    let csrf = hidden(&page, "csrf");
    let to_vendor = browser
        .post(format!("{url}/connections/authenticate"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("connector", connector),
            ("name", name),
            ("access", "contributors"),
            ("privacy", "accepted"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        to_vendor.status(),
        303,
        "{}",
        to_vendor.text().await.unwrap()
    );
    let authorize = to_vendor.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        authorize.contains("state=") && authorize.contains("client_id="),
        "{authorize}"
    );
    let vendor_page = text_of(&client(), &authorize).await;
    assert!(vendor_page.contains("Allow access"), "{vendor_page}");
    let mut form: Vec<(String, String)> = AUTHORIZE_PARAMS
        .iter()
        .map(|k| (k.to_string(), hidden(&vendor_page, k)))
        .collect();
    form.push(("account".into(), "0".into()));
    form.push(("decision".into(), "allow".into()));
    let origin: String = authorize.split('/').take(3).collect::<Vec<_>>().join("/");
    let action = vendor_page
        .split(r#"action=""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let back = client()
        .post(format!("{origin}{action}"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 303);
    let callback = back.headers()["location"].to_str().unwrap().to_string();
    assert!(
        callback.starts_with(&format!("{url}/oauth/callback?code=")),
        "{callback}"
    );
    // Anyone else who learns the callback (another session, even the same person's in another
    // browser, or a token) is refused, and the sign-in stays pending for its own session.
    let elsewhere = client();
    sign_in(&elsewhere, url, "ada", ADMIN_PASSWORD).await;
    let foreign = elsewhere.get(&callback).send().await.unwrap();
    assert_eq!(foreign.status(), 400);
    let with_token = client()
        .get(&callback)
        .bearer_auth(&w.contributor)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 400);
    let done = browser.get(&callback).send().await.unwrap();
    // The state is spent: the same answer again is refused.
    let again = browser.get(&callback).send().await.unwrap();
    assert_eq!(again.status(), 400);
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticate_with_mailchimp_and_campaign_monitor_saves_working_connections() {
    let (cm, _client, list) = vendor(Duration::ZERO).await;
    let mc = MailchimpSim::start(0).await.unwrap();
    let key = mc.add_account("Acme Mail", "us21");
    let audience = mc.add_audience(&key, "Customers");
    let w = world();
    let redirect = format!("{}/oauth/callback", w.server.url);
    let (cm_id, cm_secret) = cm.register_oauth_app(&redirect);
    let (mc_id, mc_secret) = mc.register_oauth_app(&redirect);
    set_oauth_app(
        &w,
        "campaign-monitor",
        &cm_id,
        &cm_secret,
        &[
            "--authorize-url".into(),
            cm.authorize_url(),
            "--token-url".into(),
            cm.token_url(),
            "--base-url".into(),
            cm.base_url(),
            // The simulator checks a PKCE challenge when one is sent.
            "--pkce".into(),
        ],
    );
    set_mailchimp_app(&w, &mc, &mc_id, &mc_secret);

    for (connector, name) in [("mailchimp", "mc"), ("campaign-monitor", "cm")] {
        let done = authenticate(&w, connector, name).await;
        let status = done.status();
        let page = done.text().await.unwrap();
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("Connection added"), "{page}");
    }
    let (_, mc_conn) = w
        .call(Some(&w.admin), "GET", "/api/v1/connections/mc", None)
        .await;
    assert_eq!(mc_conn["credential"], "oauth");
    assert_eq!(mc_conn["data_centre"], "us21", "{mc_conn}");
    assert_eq!(mc_conn["privacy_accepted_by"], "ada");

    // Exports over both OAuth connections deliver.
    let mut runs = vec![];
    for (name, connection, setting) in [
        ("to-mc", "mc", json!({"audience-id": audience})),
        ("to-cm", "cm", json!({"list-id": list})),
    ] {
        let body = json!({"name": name, "connection": connection, "settings": setting,
            "mapping": {"email": "email"}, "segments": ["newsletter"]});
        let (status, saved) = w
            .call(Some(&w.contributor), "POST", "/api/v1/exports", Some(body))
            .await;
        assert_eq!(status, 201, "{saved}");
        let (_, queued) = w
            .call(
                Some(&w.contributor),
                "POST",
                &format!("/api/v1/exports/{name}/runs"),
                Some(json!({})),
            )
            .await;
        runs.push(queued["run_id"].as_i64().unwrap());
    }
    for id in runs {
        let run = w.finished(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    assert!(!mc.members(&audience).is_empty());
    assert!(!cm.subscribers(&list).is_empty());
    w.op.assert_secrets_nowhere(&[&cm_secret, &mc_secret]);
}

/// `oauth-app set CONNECTOR` with the client secret from the environment.
fn set_oauth_app(w: &World, connector: &str, id: &str, secret: &str, extra: &[String]) {
    let mut args: Vec<String> = ["oauth-app", "set", connector, "--client-id", id]
        .map(String::from)
        .to_vec();
    args.extend_from_slice(extra);
    let out =
        w.op.command(&args)
            .env("CONNECTOR_OAUTH_CLIENT_SECRET", secret)
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Mailchimp's OAuth application `id`, registered at the simulator, with its endpoints there.
pub(super) fn set_mailchimp_app(w: &World, mc: &MailchimpSim, id: &str, secret: &str) {
    set_oauth_app(
        w,
        "mailchimp",
        id,
        secret,
        &[
            "--authorize-url".into(),
            format!("{}/authorize", mc.oauth_url()),
            "--token-url".into(),
            format!("{}/token", mc.oauth_url()),
            "--metadata-url".into(),
            format!("{}/metadata", mc.oauth_url()),
            "--base-url".into(),
            mc.base_url("{dc}"),
        ],
    );
}
