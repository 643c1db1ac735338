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
    // Wrong passwords, then too many: 429 with Retry-After, even for the right one.
    for _ in 0..10 {
        let answer = sign_in(&client(), url, "ada", "wrong password!!").await;
        assert_eq!(answer.status(), 401);
    }
    let answer = sign_in(&client(), url, "ada", ADMIN_PASSWORD).await;
    assert_eq!(answer.status(), 429);
    assert!(answer.headers().contains_key("retry-after"));
}
