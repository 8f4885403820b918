//! The browser harness (`hallmonitor_e2e::browser`) against a tiny site
//! served from the test itself, with the Content-Security-Policy the
//! console sends (no inline or eval'd script, no inline style): filling
//! and submitting a form, waiting for what a script adds, a screenshot,
//! a phone-width window, cookie flags, a certificate no system store
//! trusts (as the collector's, from its own CA), and axe-core finding
//! nothing on an accessible page and what is missing on one that is not.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use hallmonitor_e2e::browser::{Browser, Impact, SameSite};
use hallmonitor_e2e::wait_for;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'";

const GOOD_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Smoke test</title>
<link rel="stylesheet" href="/site.css">
<script src="/late.js" defer></script>
<script>document.title = 'inline script ran';</script>
</head>
<body>
<main>
<h1>Find a device</h1>
<form action="/hello" method="get">
<label for="name">Device name</label>
<input id="name" name="name" type="text" autocomplete="off">
<button type="submit" id="go">Search</button>
</form>
<p><a href="/bad">A page that is not accessible</a></p>
</main>
</body>
</html>
"#;

const BAD_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Not accessible</title></head>
<body>
<main>
<h1>Devices</h1>
<img src="/logo.png">
<input type="text" id="unlabelled">
</main>
</body>
</html>
"#;

const STYLE: &str = "body { font-family: sans-serif; margin: 1rem; max-width: 40rem; }\n";

/// Adds an element a moment after load, so that `wait_for` must wait.
const LATE_SCRIPT: &str = "setTimeout(() => {\n\
    const p = document.createElement('p');\n\
    p.id = 'late';\n\
    p.textContent = 'Loaded later';\n\
    document.querySelector('main').append(p);\n\
}, 300);\n";

#[test]
fn a_page_can_be_driven_like_a_person() {
    let site = serve();
    let browser = Browser::start();

    browser.goto(&format!("http://{site}/"));
    assert!(browser.exists("#name"));
    assert!(!browser.exists("#greeting"));

    browser.wait_for("#late");
    assert_eq!(browser.text("#late"), "Loaded later");

    browser.fill("#name", "first draft");
    browser.fill("#name", "lab-07");
    browser.click("#go");
    browser.wait_for("#greeting");
    assert_eq!(browser.text("#greeting"), "Results for lab-07");
    assert!(
        browser.current_url().ends_with("/hello?name=lab-07"),
        "{}",
        browser.current_url()
    );
    assert!(browser.page_source().contains("Results for lab-07"));

    // Submitting with Enter, as a person would.
    browser.goto(&format!("http://{site}/"));
    browser.fill("#name", "lab-08");
    browser.press_enter("#name");
    browser.wait_for("#greeting");
    assert_eq!(browser.text("#greeting"), "Results for lab-08");
    // And through the form itself (its submit event, no button).
    browser.fill("#name", "lab-09");
    browser.submit_form("form");
    // The old page has a #greeting too: wait for the new address.
    wait_for("the results for lab-09", Duration::from_secs(10), || {
        browser
            .current_url()
            .ends_with("?name=lab-09")
            .then_some(())
    });
    assert_eq!(browser.text("#greeting"), "Results for lab-09");
    assert_eq!(
        browser.attribute("#name", "autocomplete").as_deref(),
        Some("off")
    );
    assert_eq!(browser.attribute("#name", "aria-invalid"), None);
    assert_eq!(browser.count("form input"), 1);

    // Over HTTPS with a self-signed certificate, as the console is.
    let tls_site = serve_tls();
    browser.goto(&format!("https://{tls_site}/"));
    let title = browser.execute("return document.title;", vec![]);
    assert!(browser.exists("#name"), "the browser shows {title}");
    let cookie = browser
        .cookies()
        .into_iter()
        .find(|c| c.name == "smoke")
        .expect("the cookie the site set");
    assert_eq!(cookie.value, "1");
    assert!(cookie.http_only && cookie.secure, "{cookie:?}");
    assert_eq!(cookie.same_site, Some(SameSite::Strict));
    assert_eq!(cookie.path.as_deref(), Some("/"));
    assert_eq!(cookie.expires, None, "a session cookie");

    let shot = browser.screenshot("browser-smoke");
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", shot.display());
    assert!(png.len() > 1000, "{} bytes", png.len());

    // A phone: the page fits 360 px without scrolling sideways.
    browser.goto(&format!("http://{site}/"));
    browser.set_window_size(360, 800);
    let width = |js: &str| browser.execute(js, vec![]).as_u64().expect(js);
    assert_eq!(width("return window.innerWidth;"), 360);
    assert!(width("return document.documentElement.scrollWidth;") <= 360);
}

#[test]
fn axe_finds_nothing_on_an_accessible_page_and_what_another_lacks() {
    let site = serve();
    let browser = Browser::start();

    browser.goto(&format!("http://{site}/"));
    // The policy is enforced (the page's inline script did not run), so
    // axe running here proves the harness's injection is exempt from it.
    let title = browser.execute("return document.title;", vec![]);
    assert_eq!(title, "Smoke test");
    let violations = browser.axe();
    assert!(violations.is_empty(), "{violations:#?}");
    browser.assert_no_serious_axe_violations("the good page");

    browser.click("a[href='/bad']");
    browser.wait_for("#unlabelled");
    let violations = browser.axe();
    for rule in ["image-alt", "label"] {
        let violation = violations
            .iter()
            .find(|v| v.id == rule)
            .unwrap_or_else(|| panic!("no {rule} violation in {violations:#?}"));
        assert!(violation.impact >= Some(Impact::Serious), "{violation:?}");
        assert!(!violation.targets.is_empty(), "{violation:?}");
    }
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        browser.assert_no_serious_axe_violations("the bad page")
    }));
    let message = failed.expect_err("the check fails on the bad page");
    let message = message
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(
        message.contains("image-alt") && message.contains("label"),
        "{message}"
    );
}

/// Serves the site over plain HTTP on a loopback port until the test
/// process ends.
fn serve() -> SocketAddr {
    serve_with(|mut stream| answer(&mut stream))
}

/// The site over HTTPS, with a self-signed certificate for 127.0.0.1.
fn serve_tls() -> SocketAddr {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("a certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("TLS configuration");
    let config = Arc::new(config);
    serve_with(move |stream| {
        let Ok(connection) = rustls::ServerConnection::new(config.clone()) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(connection, stream);
        answer(&mut tls);
        tls.conn.send_close_notify();
        let _ = tls.flush();
    })
}

fn serve_with(handle: impl Fn(std::net::TcpStream) + Send + Sync + Clone + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the test site");
    let address = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            // Browsers open spare connections that may never send a
            // request: one thread each, so none blocks the others.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let handle = handle.clone();
            std::thread::spawn(move || handle(stream));
        }
    });
    address
}

fn answer(stream: &mut (impl Read + Write)) {
    let mut reader = BufReader::new(&mut *stream).take(16 * 1024);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // The rest of the head, up to the blank line.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = page(target);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nContent-Security-Policy: {CSP}\r\n\
         Set-Cookie: smoke=1; Path=/; HttpOnly; Secure; SameSite=Strict\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

fn page(target: &str) -> (&'static str, &'static str, String) {
    const HTML: &str = "text/html; charset=utf-8";
    match target.split_once('?') {
        None if target == "/" => ("200 OK", HTML, GOOD_PAGE.into()),
        None if target == "/bad" => ("200 OK", HTML, BAD_PAGE.into()),
        None if target == "/site.css" => ("200 OK", "text/css", STYLE.into()),
        None if target == "/late.js" => ("200 OK", "text/javascript", LATE_SCRIPT.into()),
        Some(("/hello", query)) => {
            // Only names made of letters, digits and '-' are echoed.
            let name = query.strip_prefix("name=").unwrap_or("");
            let name: String = name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let body = GOOD_PAGE.replace(
                "<h1>Find a device</h1>",
                &format!("<h1>Find a device</h1>\n<p id=\"greeting\">Results for {name}</p>"),
            );
            ("200 OK", HTML, body)
        }
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}
