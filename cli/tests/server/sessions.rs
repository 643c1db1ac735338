//! The console's sessions: cookies, CSRF tokens and the limit on failed sign-ins.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_limited_and_sessions_need_their_csrf_token() {
    let w = world();
    let browser = client();
    let url = &w.server.url;
    // A sign-in form posted from elsewhere (no token, or another browser's) is refused even
    // with the right password, and is not counted as a failed password.
    let elsewhere = client();
    let page = text_of(&client(), &format!("{url}/sign-in")).await;
    for token in ["", hidden(&page, "sign_in").as_str()] {
        let answer = elsewhere
            .post(format!("{url}/sign-in"))
            .form(&[
                ("sign_in", token),
                ("name", "ada"),
                ("password", ADMIN_PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "sign-in token {token:?}");
        assert!(!answer.headers().contains_key("set-cookie"));
    }
    // A right password signs in; the session cookie is HttpOnly.
    let answer = sign_in(&browser, url, "ada", ADMIN_PASSWORD).await;
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    // With the session: reading works; a change without the CSRF token is refused.
    let me: Value = browser
        .get(format!("{url}/api/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "ada");
    let refused = browser
        .post(format!("{url}/api/v1/connectors/mailchimp/approve"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let page = text_of(&browser, &format!("{url}/connectors")).await;
    let csrf = hidden(&page, "csrf");
    let approved = browser
        .post(format!("{url}/api/v1/connectors/mailchimp/approve"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);
    // Bad tokens from this address (a broken script, say): its failures turn into 429s, but
    // the people at the same address still sign in, by password and by token.
    for n in 1..=11 {
        let answer = client()
            .get(format!("{url}/api/v1/me"))
            .bearer_auth(format!("cht_not-a-token-{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            if n > 10 { 429 } else { 401 },
            "bad token {n}"
        );
    }
    let answer = sign_in(&client(), url, "ada", ADMIN_PASSWORD).await;
    assert_eq!(
        answer.status(),
        303,
        "ada was locked out by someone else's failures"
    );
    let me = client()
        .get(format!("{url}/api/v1/me"))
        .bearer_auth(&w.contributor)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "a valid token was refused");
    // Wrong passwords for one account, then too many: 429 with Retry-After for that account,
    // even with the right password; the other accounts are not under attack.
    for _ in 0..10 {
        let answer = sign_in(&client(), url, "ada", "wrong password!!").await;
        assert!([401, 429].contains(&answer.status().as_u16()));
    }
    let answer = sign_in(&client(), url, "ada", ADMIN_PASSWORD).await;
    assert_eq!(answer.status(), 429);
    assert!(answer.headers().contains_key("retry-after"));
    let me = client()
        .get(format!("{url}/api/v1/me"))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        me.status(),
        200,
        "ada's token works while her password waits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_trusted_proxy_says_who_the_client_is() {
    // The server believes X-Forwarded-For from loopback only: the tests' proxy.
    let op = Operator::new(44, 20);
    let out = op
        .command(&[
            "users",
            "add",
            "ada",
            "--role",
            "administrator",
            "--password-env",
            "PW",
        ])
        .env("PW", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let server = start_with(&op, &["--trusted-proxy", "127.0.0.0/8"]);
    let url = &server.url;
    let bad_token = |client_ip: &'static str| async move {
        client()
            .get(format!("{url}/api/v1/me"))
            .bearer_auth("cht_wrong")
            .header("x-forwarded-for", client_ip)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // One client behind the proxy fails often; another behind the same proxy does not pay.
    for _ in 0..10 {
        assert_eq!(bad_token("203.0.113.1").await, 401);
    }
    assert_eq!(bad_token("203.0.113.1").await, 429);
    assert_eq!(bad_token("203.0.113.2").await, 401);
}
