//! The console in a real browser (headless Chromium through WebDriver)
//! against a running collector with a real agent and a real SMTP server:
//! the link in a notification email opens the flag after sign-in, a
//! technician approves disabling and sees the agent's confirmation arrive,
//! finds one device among hundreds, is refused incidents; a DSL sees the
//! snapshot and reviews the capture through its form, then opens the pupil's risk profile; a governor sees only the
//! dashboard and the annual review; the fifth wrong password
//! is throttled; every main page (the site policy and activity settings
//! pages with their refusals too) passes axe-core (no serious or critical
//! violation), fits a 360-px phone, and is saved as a screenshot under
//! `target/console-screenshots/`.

use std::net::TcpListener;
use std::time::Duration;

use hallmonitor_e2e::browser::{Browser, SameSite};
use hallmonitor_e2e::fixtures::*;
use hallmonitor_e2e::{Agent, CollectorData, text, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Hundreds of other devices, enrolled straight into the store.
fn many_devices(data: &CollectorData, n: usize) {
    use hallmonitor_collector::model::{DeviceFacts, DeviceId};
    use hallmonitor_collector::store::{DeviceStore, Enrollment, SiteStore};
    runtime().block_on(async {
        let store = hallmonitor_collector::open_store(&data.data).await.unwrap();
        let site = store.site_by_name(&data.site).await.unwrap().unwrap();
        for i in 0..n {
            let facts = DeviceFacts {
                hostname: format!("lab-{i:04}"),
                machine_id: format!("many-{i}"),
                serial_number: format!("MANY{i:04}"),
                os_name: "Debian GNU/Linux".into(),
                ..DeviceFacts::default()
            };
            store
                .save_enrollment(Enrollment::active(
                    DeviceId::from_string(format!("dev-many-{i:04}")),
                    site.id,
                    facts,
                    format!("many-cert-{i}"),
                    jiff::Timestamp::now(),
                ))
                .await
                .unwrap();
        }
        store.close().await;
    });
}

/// Checks the page against axe-core, its width at 360 px, and saves a
/// screenshot of it.
fn check_page(browser: &Browser, name: &str) {
    browser.assert_no_serious_axe_violations(name);
    browser.screenshot(name);
    browser.set_window_size(360, 800);
    let overflow = browser.execute(
        "return document.documentElement.scrollWidth - window.innerWidth;",
        vec![],
    );
    assert!(
        overflow.as_i64().unwrap_or(i64::MAX) <= 0,
        "{name} is wider than a 360-px phone by {overflow} px"
    );
    browser.screenshot(&format!("{name}-phone"));
    browser.set_window_size(1280, 900);
}

fn sign_in(browser: &Browser, username: &str, password: &str) {
    browser.wait_for("#username");
    browser.fill("#username", username);
    browser.fill("#password", password);
    browser.submit_form("form[action='/login']");
}

#[test]
fn people_use_the_console_in_a_browser() {
    let data = CollectorData::init("Cabot");
    data.set_config("evaluate_every_secs", "1");
    let api_port = free_port();
    let smtp_port = free_port();
    let console_url = format!("https://localhost:{api_port}");
    let path = data.data.join("collector.toml");
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("host = \"\"", "host = \"127.0.0.1\"", 1)
        .replacen("port = 587", &format!("port = {smtp_port}"), 1)
        .replacen("security = \"starttls\"", "security = \"none\"", 1)
        .replacen(
            "console_url = \"\"",
            &format!("console_url = \"{console_url}\""),
            1,
        );
    std::fs::write(&path, toml).unwrap();
    data.set_config("api_listen", &format!("\"127.0.0.1:{api_port}\""));
    let root = tempfile::tempdir().unwrap();
    let maildir = root.path().join("maildir");
    let _smtp = start_smtp(&data, smtp_port, &maildir);
    many_devices(&data, 300);
    let tech_pw = add_user(&data, "tech1", "technician");
    let dsl_pw = add_user(&data, "dsl1", "dsl");
    let gov_pw = add_user(&data, "gov1", "governor");
    let admin_pw = add_user(&data, "admin2", "admin");
    add_user(&data, "target", "technician");
    let collector = data.start();
    assert_eq!(collector.api.port(), api_port);
    let added = data.cli(&[
        "recipients",
        "add",
        "--site",
        "Cabot",
        "--role",
        "technician",
        "--email",
        "tech@cabot.sch.uk",
    ]);
    assert!(added.status.success(), "{}", text(&added.stderr));

    // A real agent: a pupil logged in for seconds in 60 days (so a
    // device_inactive flag opens), and one severe capture with a snapshot.
    let utmp = root.path().join("utmp");
    let now = jiff::Timestamp::now().as_second();
    let mut records = utmp_record(":0", "pupil1", ":0", now);
    records.extend(utmp_record("tty1", "root", "", now));
    std::fs::write(&utmp, records).unwrap();
    let locked = root.path().join("locked");
    let extra = format!(
        "[sessions]\nsource = \"utmp\"\nutmp_path = \"{}\"\npoll_secs = 1\n\
         [enforcement]\nadmin_accounts = [\"root\"]\n\
         lock_session_command = [\"sh\", \"-c\", \"echo \\\"$1\\\" >> {}\", \"lock\"]\n",
        utmp.display(),
        locked.display()
    );
    let agent = Agent::with_config(
        &data.agent_settings(&collector, "e2e-console-1"),
        "",
        &extra,
    );
    let device = agent.enroll();
    enrolled_days_ago(&data, &device, 60);
    let image = png(180);
    queue_now(&agent.data, vec![severe_capture("pupil1", &image)]);
    let _daemon = agent.start();

    // The technician's email names the flag's page.
    let link = wait_for("the flag email", WAIT, || {
        std::fs::read_dir(maildir.join("new"))
            .ok()?
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .find(|m| m.contains("inactive"))
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.trim().strip_prefix("Review: ").map(str::to_owned))
            })
    });
    assert!(link.starts_with(&format!("{console_url}/flags/")), "{link}");
    let flag_path = link.trim_start_matches(&console_url).to_owned();

    let browser = Browser::start();
    // The fifth wrong password is refused unchecked.
    browser.goto(&format!("{console_url}/login"));
    for attempt in 1..=5 {
        sign_in(&browser, "target", "not-the-password");
        browser.wait_for("#login-error");
        let message = browser.text("#login-error");
        if attempt < 5 {
            assert!(
                message.contains("not right"),
                "attempt {attempt}: {message}"
            );
        } else {
            assert!(message.contains("Too many failed sign-ins"), "{message}");
        }
    }

    // Opening the email's link: sign in, then the flag's page.
    browser.goto(&link);
    browser.wait_for("#username");
    assert!(
        browser.current_url().contains("/login?next="),
        "{}",
        browser.current_url()
    );
    check_page(&browser, "login");
    sign_in(&browser, "tech1", &tech_pw);
    browser.wait_for("#flag-state");
    assert!(
        browser.current_url().ends_with(&flag_path),
        "{}",
        browser.current_url()
    );
    let cookie = browser
        .cookies()
        .into_iter()
        .find(|c| c.name == "__Host-hm_session")
        .expect("a session cookie");
    assert!(cookie.http_only && cookie.secure, "{cookie:?}");
    assert_eq!(cookie.same_site, Some(SameSite::Strict));
    assert_eq!(browser.text("#flag-state"), "open");
    check_page(&browser, "flag");
    browser.click("#approve");
    // The agent locks the pupil's session and confirms; the page shows it
    // on refresh.
    wait_for("the agent's confirmation on the flag page", WAIT, || {
        browser.goto(&link);
        browser.wait_for("#flag-state");
        (browser.text("#flag-state") == "disabled").then_some(())
    });
    assert!(browser.page_source().contains("console:tech1"));

    // One device among hundreds.
    browser.goto(&format!("{console_url}/devices"));
    browser.wait_for("#devices");
    assert_eq!(browser.count("#devices tbody tr"), 50, "a page of 50");
    assert!(browser.exists("#next-page"));
    check_page(&browser, "devices");
    browser.fill("#q", "lab-0123");
    browser.submit_form("form[action='/devices']");
    wait_for("the search result", WAIT, || {
        (browser.count("#devices tbody tr") == 1).then_some(())
    });
    assert!(browser.text("#devices tbody").contains("lab-0123"));
    browser.goto(&format!("{console_url}/devices/{device}"));
    browser.wait_for("#compliance");
    assert_eq!(browser.text("#enforcement"), "disabled");
    check_page(&browser, "device");
    for (path, name) in [
        ("/", "dashboard"),
        ("/flags?state=all", "flags"),
        ("/mfa", "mfa"),
        ("/settings", "settings"),
        ("/settings/alerts", "alerts"),
        ("/settings/aup?site=Cabot", "aup-settings"),
        ("/aup", "aup-answers"),
        ("/account", "account"),
    ] {
        browser.goto(&format!("{console_url}{path}"));
        browser.wait_for("main h1");
        check_page(&browser, name);
    }
    // The site's policy: a mistake is shown at its line beside the field;
    // two good versions, then their differences.
    browser.goto(&format!("{console_url}/settings/policy?site=Cabot"));
    browser.wait_for("#policy-text");
    browser.fill("#policy-text", "extends = \"default\"\nbogus = 1\n");
    browser.submit_form("form[action='/settings/policy']");
    browser.wait_for("#policy-errors");
    assert!(browser.text("#policy-errors").contains("Line 2"));
    check_page(&browser, "policy-refused");
    let rule = |phrase: &str| {
        format!(
            "extends = \"default\"\n[[rules]]\nid = \"local\"\ncategory = \"gambling\"\nseverity = 2\nphrases = [\"{phrase}\"]\n"
        )
    };
    for phrase in ["online casino", "bet now"] {
        browser.fill("#policy-text", &rule(phrase));
        browser.submit_form("form[action='/settings/policy']");
        browser.wait_for("#policy-notice");
    }
    browser.wait_for("#policy-diff");
    assert!(browser.text("#policy-diff").contains("bet now"));
    check_page(&browser, "policy");
    // Activity thresholds and retention: a bad value named at its field.
    browser.goto(&format!("{console_url}/settings/activity?site=Cabot"));
    browser.wait_for("#f-window_days");
    browser.fill("#f-window_days", "0");
    browser.submit_form("form[action='/settings/activity']");
    browser.wait_for("#err-window_days");
    check_page(&browser, "activity-refused");
    browser.goto(&format!("{console_url}/settings/activity?site=Cabot"));
    browser.wait_for("#activity-in-force");
    check_page(&browser, "activity");
    // Technicians never see incidents or snapshots.
    browser.goto(&format!("{console_url}/incidents/1"));
    browser.wait_for("main h1");
    assert_eq!(browser.text("main h1"), "Not allowed");
    assert!(!browser.page_source().contains("hurt myself"));
    browser.wait_for("nav[aria-label='Main'] a[href='/devices']");
    check_page(&browser, "forbidden");
    browser.goto(&format!("{console_url}/no/such/page"));
    browser.wait_for("main h1");
    assert_eq!(browser.text("main h1"), "Page not found");
    // Still signed in: the page keeps the navigation.
    browser.wait_for("nav[aria-label='Main'] a[href='/devices']");
    check_page(&browser, "not-found");
    browser.goto(&format!("{console_url}/account"));
    browser.wait_for("main h1");
    browser.click("form[action='/logout'] button");
    browser.wait_for("#username");

    // The DSL sees the incident and its snapshot.
    sign_in(&browser, "dsl1", &dsl_pw);
    browser.wait_for("main h1");
    browser.goto(&format!("{console_url}/incidents"));
    browser.wait_for("#incidents");
    check_page(&browser, "incidents");
    browser.click("#incidents tbody a");
    browser.wait_for("img.snapshot");
    let width = wait_for("the snapshot to load", WAIT, || {
        let w = browser.execute(
            "return document.querySelector('img.snapshot').naturalWidth;",
            vec![],
        );
        w.as_i64().filter(|w| *w > 0)
    });
    assert_eq!(width, 64, "the real image, decoded");
    assert!(browser.page_source().contains("hurt myself"));
    check_page(&browser, "incident");
    // The DSL reviews the capture through its form: closing without an
    // outcome is refused beside the form, then escalated with one.
    browser.click("form.review input[value='escalated']");
    browser.submit_form("form.review");
    browser.wait_for("form.review p.error[role='alert']");
    check_page(&browser, "incident-review-refused");
    browser.click("form.review input[value='escalated']");
    browser.fill("form.review textarea[name='outcome']", "referred to CEOP");
    browser.fill("form.review input[name='reference']", "CPOMS-101");
    browser.submit_form("form.review");
    browser.wait_for("section.capture table[id^='history-']");
    let reviewed = browser.text("section.capture table[id^='history-']");
    assert!(
        reviewed.contains("Escalated") && reviewed.contains("referred to CEOP (record: CPOMS-101)"),
        "{reviewed}"
    );
    assert!(
        browser
            .text("#incident-review")
            .contains("all captures reviewed")
    );
    check_page(&browser, "incident-reviewed");
    // From the incident to the pupil's risk profile: the capture, graded
    // 5 by its rule, at its hour in the heatmap.
    browser.click("#risk-account");
    browser.wait_for("#heatmap");
    assert_eq!(browser.text("#risk-total"), "Captures in the period: 1");
    assert!(
        browser.text("#grades").contains("self-harm"),
        "{}",
        browser.text("#grades")
    );
    check_page(&browser, "risk-profile");
    browser.click("form[action='/logout'] button");
    browser.wait_for("#username");

    // The governor sees the dashboard and the annual review only: counts,
    // never a pupil.
    sign_in(&browser, "gov1", &gov_pw);
    browser.wait_for("main h1");
    assert_eq!(
        browser.count("nav[aria-label='Main'] li"),
        2,
        "{}",
        browser.page_source()
    );
    check_page(&browser, "governor-dashboard");
    browser.click("nav[aria-label='Main'] a[href='/report']");
    browser.wait_for("#coverage");
    assert_eq!(browser.text("#pupils-affected"), "1");
    assert!(browser.text("#coverage").contains("Enrolled"));
    assert!(browser.text("#staff-access").contains("dsl1"));
    let report = browser.page_source();
    assert!(!report.contains("pupil1") && !report.contains("hurt myself"));
    check_page(&browser, "governor-report");
    browser.goto(&format!("{console_url}/devices"));
    browser.wait_for("main h1");
    assert_eq!(browser.text("main h1"), "Not allowed");
    browser.goto(&format!("{console_url}/risk?account=pupil1"));
    browser.wait_for("main h1");
    assert_eq!(browser.text("main h1"), "Not allowed");
    browser.goto(&format!("{console_url}/"));
    browser.wait_for("main h1");
    browser.click("form[action='/logout'] button");
    browser.wait_for("#username");

    // The administrator's pages.
    sign_in(&browser, "admin2", &admin_pw);
    browser.wait_for("main h1");
    for (path, name) in [
        ("/users", "users"),
        // With the routes editor.
        ("/settings", "settings-admin"),
        // Last: its text is read below.
        ("/audit", "audit"),
    ] {
        browser.goto(&format!("{console_url}{path}"));
        browser.wait_for("main h1");
        check_page(&browser, name);
    }
    let audit = browser.page_source();
    assert!(
        audit.contains("snapshot viewed") && audit.contains("console:dsl1"),
        "{audit}"
    );
    assert!(
        audit.contains("report viewed") && audit.contains("risk profile viewed"),
        "{audit}"
    );

    // The same review for scripts, as JSON.
    let json = data.cli(&["report", "--site", "Cabot"]);
    assert!(json.status.success(), "{}", text(&json.stderr));
    let review: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(review["schema"], "hallmonitor.annual_review.v1");
    assert_eq!(review["accounts_affected"]["pupils"], 1);
    assert!(!text(&json.stdout).contains("pupil1"));
}
