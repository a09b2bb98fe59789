//! Issue 20, item 3: the read-only web console in a real browser (headless chromium through
//! chromedriver): sign-in with a token sets a Secure, HttpOnly, SameSite=Strict session
//! cookie; policies, drills (a failed one shown red), a report, the audit log and the evidence
//! download are there; a session cannot start anything. Screenshots are kept in
//! `target/test-artifacts/console/`.

use std::time::Duration;

use fantoccini::Locator;

use crate::daemon::{Daemon, setup};
use crate::harness::browser::Browser;
use crate::harness::http::{request, request_with};
use crate::harness::wait_until;

/// Clicks the button `button` submits a form with, and waits until the next page has
/// replaced this one (an element of the page before would otherwise be taken for the answer).
async fn submit(b: &Browser, button: Locator<'_>) {
    let before = b.client.find(Locator::Css("html")).await.unwrap();
    b.client.find(button).await.unwrap().click().await.unwrap();
    let t0 = std::time::Instant::now();
    while before.tag_name().await.is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the form did not answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Signs in with `token` on the sign-in page the browser is on.
async fn sign_in(b: &Browser, token: &str) {
    let field = b
        .client
        .find(Locator::Id("token"))
        .await
        .expect("token field");
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
    submit(b, Locator::Id("signin")).await;
    // The next page: the console (naming who is signed in) or the sign-in page with an error.
    b.client
        .wait()
        .for_element(Locator::Css("#who, #error"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser_shows_everything_and_starts_nothing() {
    let s = setup(1, "0 0 0 1 1 *");
    let env = &s.env;
    // One drill passes, one fails (its RPO objective of 1 s is missed by then).
    std::fs::write(
        env.setup().join("restore-drills/app-strict.toml"),
        "policy = \"app\"\nrpo = \"1s\"\n",
    )
    .unwrap();
    env.ok(&["backup", "--policy", "app"]);
    env.ok(&["replicate"]);
    env.ok(&["drill", "run", "app-drill"]);
    std::thread::sleep(Duration::from_millis(1200));
    env.fails(&["drill", "run", "app-strict"], 1);
    let _d = Daemon::start(env, &[]);
    wait_until("the API", Duration::from_secs(30), || {
        request(s.port, "GET", "/healthz", None).is_some_and(|r| r.status == 200)
    });
    let base = format!("http://127.0.0.1:{}", s.port);
    let mut b = Browser::start("console").await;

    // Not signed in: to the sign-in page. A wrong token is refused there.
    b.client.goto(&format!("{base}/ui/drills")).await.unwrap();
    assert_eq!(b.path().await, "/ui/login");
    sign_in(&b, "dr_not-a-token").await;
    assert!(
        b.source().await.contains("That token is not valid"),
        "{}",
        b.source().await
    );
    b.shot("wrong-token").await;

    // The auditor signs in: the overview lists the policy with its recoverable window.
    sign_in(&b, &s.auditor).await;
    assert_eq!(b.path().await, "/ui");
    let who = b
        .client
        .find(Locator::Id("who"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(who, "auditor-jane");
    let policies = b
        .client
        .find(Locator::Id("policies"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        policies.contains("app") && policies.contains("snapshot"),
        "{policies}"
    );
    b.shot("overview").await;
    let cookie = b
        .client
        .get_named_cookie(dr::api::console::COOKIE)
        .await
        .expect("session cookie");
    assert!(
        cookie.secure() == Some(true) && cookie.http_only() == Some(true),
        "{cookie:?}"
    );
    assert_eq!(
        format!("{:?}", cookie.same_site()),
        "Some(Strict)",
        "{cookie:?}"
    );
    assert_eq!(cookie.path(), Some("/ui"));
    let session = format!("{}={}", dr::api::console::COOKIE, cookie.value());
    assert!(
        !b.source().await.contains(&s.auditor),
        "the token is never on a page"
    );

    // Drills: the failed one red, the passed one green, with its history.
    b.client
        .find(Locator::LinkText("Drills"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let strict_row = b
        .client
        .find(Locator::XPath(
            "//table[@id='drills']//tr[td/a[text()='app-strict']]",
        ))
        .await
        .expect("the app-strict row");
    let cell = strict_row
        .find(Locator::Css("td.verdict-fail"))
        .await
        .expect("a fail cell");
    assert_eq!(cell.text().await.unwrap(), "FAIL");
    assert_eq!(
        cell.css_value("background-color").await.unwrap(),
        "rgba(207, 34, 46, 1)"
    );
    let ok_row = b
        .client
        .find(Locator::XPath(
            "//table[@id='drills']//tr[td/a[text()='app-drill']]",
        ))
        .await
        .unwrap();
    assert_eq!(
        ok_row
            .find(Locator::Css("td.verdict-pass"))
            .await
            .unwrap()
            .css_value("background-color")
            .await
            .unwrap(),
        "rgba(26, 127, 55, 1)"
    );
    b.shot("drills").await;
    b.client
        .find(Locator::LinkText("app-strict"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(b.path().await, "/ui/drills/app-strict");
    b.client
        .find(Locator::Css("table#reports td a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(b.path().await.starts_with("/ui/reports/"));
    let banner = b
        .client
        .find(Locator::Css(".banner.fail"))
        .await
        .expect("a red banner");
    assert!(banner.text().await.unwrap().contains("FAILED"));
    assert_eq!(
        banner.css_value("background-color").await.unwrap(),
        "rgba(207, 34, 46, 1)"
    );
    assert!(b.source().await.contains("Recovery point (RPO)"));
    b.shot("failed-report").await;

    // The policy page, the audit log, the evidence form.
    b.client
        .goto(&format!("{base}/ui/policies/app"))
        .await
        .unwrap();
    let page = b.source().await;
    assert!(
        page.contains("Replicas") && page.contains("replica"),
        "{page}"
    );
    b.client
        .find(Locator::LinkText("Audit log"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let audit = b
        .client
        .find(Locator::Id("audit"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        audit.contains("drill.run") && audit.contains("app-strict"),
        "{audit}"
    );
    b.shot("audit").await;
    b.client
        .find(Locator::LinkText("Evidence"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let form = b.client.find(Locator::Id("export")).await.unwrap();
    assert_eq!(form.attr("method").await.unwrap().as_deref(), Some("get"));
    b.shot("evidence").await;
    // The download is the bundle (fetched with the browser's session, as the button does).
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let r = request_with(
        s.port,
        "GET",
        &format!("/ui/evidence/bundle.tar.gz?from={today}&to={today}&policy="),
        &[("Cookie", &session)],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/gzip"));
    assert!(
        r.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );

    // Nothing on any page posts but sign-out; the session opens nothing but /ui.
    for path in [
        "/ui",
        "/ui/drills",
        "/ui/drills/app-drill",
        "/ui/audit",
        "/ui/evidence",
        "/ui/policies/app",
    ] {
        b.client.goto(&format!("{base}{path}")).await.unwrap();
        for f in b.client.find_all(Locator::Css("form")).await.unwrap() {
            let method = f.attr("method").await.unwrap().unwrap_or_default();
            let action = f.attr("action").await.unwrap().unwrap_or_default();
            assert!(
                method == "get" || action == "/ui/logout",
                "{path}: a form posting to {action}"
            );
        }
        assert!(
            b.client
                .find_all(Locator::Css("script"))
                .await
                .unwrap()
                .is_empty(),
            "{path}: no scripts"
        );
    }
    let reports_before = request(s.port, "GET", "/v1/drills", Some(&s.auditor))
        .unwrap()
        .json()["reports"]
        .as_array()
        .unwrap()
        .len();
    for (method, path) in [
        ("POST", "/v1/drills/app-drill/run"),
        ("POST", "/v1/policies/app/backup"),
        ("GET", "/v1/status"),
    ] {
        let r = request_with(s.port, method, path, &[("Cookie", &session)]).unwrap();
        assert_eq!(
            r.status, 401,
            "{method} {path} with the console cookie: {}",
            r.body
        );
    }
    for path in [
        "/ui/drills/app-drill/run",
        "/ui/policies/app/backup",
        "/ui/drills",
    ] {
        let r = request_with(s.port, "POST", path, &[("Cookie", &session)]).unwrap();
        assert_eq!(r.status, 405, "POST {path}: {}", r.body);
    }
    let jobs = request(s.port, "GET", "/v1/jobs", Some(&s.auditor))
        .unwrap()
        .json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0, "{jobs}");
    let reports_after = request(s.port, "GET", "/v1/drills", Some(&s.auditor))
        .unwrap()
        .json()["reports"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(reports_before, reports_after);
    let r = request(s.port, "GET", "/ui", None).unwrap();
    assert_eq!(r.status, 303);
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );

    // Sign out ends the session; the operator signs in and sees the same read-only console.
    submit(&b, Locator::Css("form[action='/ui/logout'] button")).await;
    assert_eq!(b.path().await, "/ui/login");
    let r = request_with(s.port, "GET", "/ui", &[("Cookie", &session)]).unwrap();
    assert_eq!(r.status, 303, "the old session is gone");
    sign_in(&b, &s.operator).await;
    assert_eq!(b.path().await, "/ui");
    assert!(b.source().await.contains("(operator)"));
    b.shot("operator").await;
    b.close().await;
}
