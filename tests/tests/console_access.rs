//! The console's doors, over real HTTPS with curl against a running
//! collector: who may see what, CSRF, sign-in throttling, the links in
//! notification emails, session cookies, security headers. (The browser
//! tests in `console.rs` drive the same pages through Chromium.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hallmonitor_e2e::fixtures::*;
use hallmonitor_e2e::{Agent, CollectorData, RunningCollector, text, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A person's browser: curl with a cookie jar, trusting only the
/// collector's CA.
pub struct Client {
    base: String,
    ca: PathBuf,
    jar: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
    /// The CSRF token the page's forms carry.
    pub fn csrf(&self) -> String {
        let page = self.text();
        let at = page
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in {page}"));
        page[at + 19..].split('"').next().unwrap().to_owned()
    }
}

impl Client {
    pub fn new(data: &CollectorData, collector: &RunningCollector) -> Client {
        let dir = tempfile::tempdir().unwrap();
        Client {
            base: format!("https://localhost:{}", collector.api.port()),
            ca: data.data.join("pki/ca.crt"),
            jar: dir.path().join("cookies"),
            _dir: dir,
        }
    }

    fn request(&self, method: &str, path: &str, form: Option<&[(&str, &str)]>) -> Reply {
        self.request_with(method, path, form, &[])
    }

    fn request_with(
        &self,
        method: &str,
        path: &str,
        form: Option<&[(&str, &str)]>,
        headers_out: &[&str],
    ) -> Reply {
        self.curl(path, |command| {
            command.args(["-X", method]);
            for header in headers_out {
                command.args(["-H", header]);
            }
            if let Some(form) = form {
                let encoded = form
                    .iter()
                    .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                command.args(["--data-raw", &encoded]);
            }
        })
    }

    /// A multipart form with one file, as a browser sends an upload.
    pub fn upload(&self, path: &str, fields: &[(&str, &str)], file: &Path) -> Reply {
        self.curl(path, |command| {
            for (k, v) in fields {
                command.args(["-F", &format!("{k}={v}")]);
            }
            command.args(["-F", &format!("file=@{}", file.display())]);
        })
    }

    /// One curl request with this browser's CA and cookie jar; `request`
    /// adds the method, headers and body.
    fn curl(&self, path: &str, request: impl FnOnce(&mut Command)) -> Reply {
        let dir = tempfile::tempdir().unwrap();
        let headers = dir.path().join("headers");
        let body = dir.path().join("body");
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--cacert"])
            .arg(&self.ca)
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", self.port())])
            .arg("-c")
            .arg(&self.jar)
            .arg("-b")
            .arg(&self.jar)
            .arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"]);
        request(&mut command);
        command.arg(format!("{}{path}", self.base));
        let output = command.output().expect("curl runs");
        assert!(
            output.status.success(),
            "curl {path}: {}",
            text(&output.stderr)
        );
        Reply {
            status: text(&output.stdout).trim().parse().unwrap(),
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: std::fs::read(&body).unwrap_or_default(),
        }
    }

    fn port(&self) -> &str {
        self.base.rsplit(':').next().unwrap()
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> Reply {
        self.request("POST", path, Some(form))
    }

    /// A POST as a page on another site would make it.
    pub fn post_from(&self, origin: &str, path: &str, form: &[(&str, &str)]) -> Reply {
        self.request_with("POST", path, Some(form), &[&format!("Origin: {origin}")])
    }

    pub fn sign_in(&self, username: &str, password: &str) -> Reply {
        self.post(
            "/login",
            &[
                ("username", username),
                ("password", password),
                ("next", "/"),
            ],
        )
    }

    pub fn cookie_line(&self) -> String {
        std::fs::read_to_string(&self.jar).unwrap_or_default()
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An agent that sends one severe capture with a real snapshot; returns
/// (incident id, capture id, image).
pub fn incident_with_snapshot(
    data: &CollectorData,
    collector: &RunningCollector,
    root: &Path,
) -> (i64, i64, Vec<u8>, hallmonitor_e2e::Process) {
    let _ = root;
    let agent = Agent::new(&data.agent_settings(collector, "e2e-console-capture"));
    agent.enroll();
    let image = png(200);
    queue_now(&agent.data, vec![severe_capture("pupil.seven", &image)]);
    let daemon = agent.start();
    let incident = wait_for("the incident", WAIT, || {
        let list = json(&data.cli(&["incidents", "list", "--format", "json"]));
        list["incidents"].as_array()?.first().cloned()
    });
    let id = incident["id"].as_i64().unwrap();
    let shown = json(&data.cli(&[
        "incidents",
        "show",
        &id.to_string(),
        "--format",
        "json",
        "--by",
        "e2e",
    ]));
    let capture = shown["captures"][0]["id"].as_i64().unwrap();
    // Keep the agent (and its temporary directory) for the test's length.
    std::mem::forget(agent);
    (id, capture, image, daemon)
}

#[test]
fn each_role_sees_only_its_part_and_every_snapshot_view_is_audited() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let root = tempfile::tempdir().unwrap();
    let (incident, capture, image, _daemon) =
        incident_with_snapshot(&data, &collector, root.path());
    let tech_pw = add_user(&data, "tech1", "technician");
    let dsl_pw = add_user(&data, "dsl1", "dsl");
    let gov_pw = add_user(&data, "gov1", "governor");
    let admin_pw = add_user(&data, "admin2", "admin");

    let tech = Client::new(&data, &collector);
    assert_eq!(tech.sign_in("tech1", &tech_pw).status, 303);
    let incident_page = format!("/incidents/{incident}");
    let image_url = format!("/incidents/{incident}/captures/{capture}/image");
    assert_eq!(tech.get("/devices").status, 200);
    let refused = tech.get(&incident_page);
    assert_eq!(refused.status, 403);
    assert!(
        !refused.text().contains("hurt myself"),
        "no matched text in a 403"
    );
    let refused = tech.get(&image_url);
    assert_eq!(refused.status, 403);
    assert_ne!(refused.body, image);
    assert_eq!(tech.get("/incidents").status, 403);

    let dsl = Client::new(&data, &collector);
    assert_eq!(dsl.sign_in("dsl1", &dsl_pw).status, 303);
    let page = dsl.get(&incident_page);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("hurt myself"), "{}", page.text());
    assert!(page.text().contains(&image_url));
    let shown = dsl.get(&image_url);
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body, image, "the decrypted snapshot, byte for byte");
    assert_eq!(shown.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(shown.header("content-type").as_deref(), Some("image/png"));

    let gov = Client::new(&data, &collector);
    assert_eq!(gov.sign_in("gov1", &gov_pw).status, 303);
    let dashboard = gov.get("/");
    assert_eq!(dashboard.status, 200);
    assert!(dashboard.text().contains("Open incidents"));
    for path in [
        "/devices",
        "/flags",
        "/incidents",
        "/audit",
        "/users",
        &incident_page,
        &image_url,
    ] {
        assert_eq!(gov.get(path).status, 403, "governor at {path}");
    }

    // The audit log (a page itself) names who looked, when and from where.
    let admin = Client::new(&data, &collector);
    assert_eq!(admin.sign_in("admin2", &admin_pw).status, 303);
    let audit = admin.get("/audit?action=snapshot").text();
    assert!(audit.contains("console:dsl1"), "{audit}");
    assert!(audit.contains("127.0.0.1"), "{audit}");
    let forbidden = admin.get("/audit?action=console_forbidden").text();
    assert!(forbidden.contains("console:tech1") && forbidden.contains("console:gov1"));
    // Administrators manage accounts but do not see incidents.
    assert_eq!(admin.get(&image_url).status, 403);
}

#[test]
fn forms_need_the_csrf_token_sign_in_is_throttled_and_links_survive_sign_in() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let admin_pw = add_user(&data, "admin2", "admin");
    let browser = Client::new(&data, &collector);

    // An email link opened before signing in comes back after it.
    let before = browser.get("/flags/7");
    assert_eq!(before.status, 303);
    assert_eq!(
        before.header("location").as_deref(),
        Some("/login?next=/flags/7")
    );
    let signed_in = browser.post(
        "/login",
        &[
            ("username", "admin2"),
            ("password", &admin_pw),
            ("next", "/flags/7"),
        ],
    );
    assert_eq!(signed_in.status, 303);
    assert_eq!(signed_in.header("location").as_deref(), Some("/flags/7"));
    let cookie = signed_in.header("set-cookie").unwrap();
    for attribute in [
        "__Host-hm_session=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    // A form posted from another site is refused, sign-in included; one
    // from the console's own origin is not.
    let foreign = Client::new(&data, &collector).post_from(
        "https://evil.example",
        "/login",
        &[("username", "admin2"), ("password", &admin_pw)],
    );
    assert_eq!(foreign.status, 403);
    let cross_site = Client::new(&data, &collector).request_with(
        "POST",
        "/login",
        Some(&[("username", "admin2"), ("password", &admin_pw)]),
        &["Sec-Fetch-Site: cross-site", "Origin: null"],
    );
    assert_eq!(cross_site.status, 403);
    let own = Client::new(&data, &collector).post_from(
        &format!("https://localhost:{}", collector.api.port()),
        "/login",
        &[("username", "admin2"), ("password", &admin_pw)],
    );
    assert_eq!(own.status, 303);
    // A link elsewhere is not followed.
    let offsite = Client::new(&data, &collector).post(
        "/login",
        &[
            ("username", "admin2"),
            ("password", &admin_pw),
            ("next", "//evil.example/"),
        ],
    );
    assert_eq!(offsite.header("location").as_deref(), Some("/"));

    let page = browser.get("/users");
    assert_eq!(page.status, 200);
    for header in [
        "content-security-policy",
        "x-frame-options",
        "referrer-policy",
        "strict-transport-security",
    ] {
        assert!(page.header(header).is_some(), "{header} missing");
    }
    assert!(
        !page
            .header("content-security-policy")
            .unwrap()
            .contains("unsafe-inline")
    );
    let token = page.csrf();
    let without = browser.post(
        "/users",
        &[("username", "sneaky"), ("role", "admin"), ("sites", "all")],
    );
    assert_eq!(without.status, 403);
    let wrong = browser.post(
        "/users",
        &[
            ("csrf", "0000"),
            ("username", "sneaky"),
            ("role", "admin"),
            ("sites", "all"),
        ],
    );
    assert_eq!(wrong.status, 403);
    let list = text(&data.cli(&["users", "list"]).stdout);
    assert!(!list.contains("sneaky"), "{list}");
    let with = browser.post(
        "/users",
        &[
            ("csrf", &token),
            ("username", "newtech"),
            ("role", "technician"),
            ("sites", "Cabot"),
        ],
    );
    assert_eq!(with.status, 200, "{}", with.text());
    assert!(with.text().contains("created-password"));
    let list = text(&data.cli(&["users", "list"]).stdout);
    assert!(list.contains("newtech"), "{list}");
    // An administrator of one site cannot grant every site.
    let scoped_pw = {
        let output = data.cli(&[
            "users",
            "add",
            "siteadmin",
            "--role",
            "admin",
            "--sites",
            "Cabot",
        ]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout)
            .rsplit_once("(shown once): ")
            .unwrap()
            .1
            .trim()
            .to_owned()
    };
    let scoped = Client::new(&data, &collector);
    assert_eq!(scoped.sign_in("siteadmin", &scoped_pw).status, 303);
    let scoped_token = scoped.get("/users").csrf();
    let escalate = scoped.post(
        "/users",
        &[
            ("csrf", &scoped_token),
            ("username", "everywhere"),
            ("role", "admin"),
            ("sites", "all"),
        ],
    );
    assert_eq!(escalate.status, 422, "{}", escalate.text());
    assert!(!text(&data.cli(&["users", "list"]).stdout).contains("everywhere"));
    assert!(
        !scoped.get("/users").text().contains("admin2"),
        "all-site accounts hidden"
    );
    // The audit log of its own site: its accounts, whoever acted on
    // them; not the rows about all-site accounts or the collector.
    let own = scoped.get("/audit");
    assert_eq!(own.status, 200);
    let rows = between(&own.text(), "<tbody", "</tbody>").to_owned();
    assert!(rows.contains("user newtech"), "{rows}");
    assert!(
        !rows.contains("user admin2") && !rows.contains("collector initialised"),
        "{rows}"
    );
    // A bad field is named beside the form and changes nothing.
    let bad = browser.post(
        "/users",
        &[
            ("csrf", &token),
            ("username", "x y"),
            ("role", "technician"),
            ("sites", "Nowhere"),
        ],
    );
    assert_eq!(bad.status, 422);
    assert!(bad.text().contains("A username has"), "{}", bad.text());

    // Four wrong passwords are refused one by one; the fifth attempt is
    // refused unchecked, even with the right password.
    let tech_pw = add_user(&data, "tech1", "technician");
    let attacker = Client::new(&data, &collector);
    for _ in 0..4 {
        assert_eq!(attacker.sign_in("tech1", "guess-guess-guess").status, 401);
    }
    let fifth = attacker.sign_in("tech1", &tech_pw);
    assert_eq!(fifth.status, 429, "{}", fifth.text());
    assert!(fifth.text().contains("Too many failed sign-ins"));
    assert!(
        !attacker.cookie_line().contains("hm_session\t"),
        "no session cookie"
    );
    // The reset from the command line lets the person in again.
    let reset = data.cli(&["users", "passwd", "tech1"]);
    assert!(reset.status.success());
    let new_pw = text(&reset.stdout)
        .rsplit_once("(shown once): ")
        .unwrap()
        .1
        .trim()
        .to_owned();
    assert_eq!(
        Client::new(&data, &collector)
            .sign_in("tech1", &new_pw)
            .status,
        303
    );
    let audit = browser.get("/audit?action=console_login_").text();
    assert!(
        audit.contains("console login failed") && audit.contains("console login throttled"),
        "{audit}"
    );

    // Signing out ends the session on the server: the old cookie is dead.
    let saved = std::fs::read_to_string(&browser.jar).unwrap();
    let out = browser.post("/logout", &[("csrf", &token)]);
    assert_eq!(out.status, 303);
    std::fs::write(&browser.jar, saved).unwrap();
    assert_eq!(browser.get("/users").status, 303, "replayed cookie refused");
}

#[test]
fn a_second_factor_is_asked_for_once_set_up() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let pw = add_user(&data, "head", "dsl");
    let browser = Client::new(&data, &collector);
    assert_eq!(browser.sign_in("head", &pw).status, 303);
    let account = browser.get("/account");
    let page = account.text();
    let secret = page
        .split("id=\"tf-key\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .to_owned();
    let now = || jiff::Timestamp::now().as_second() as u64;
    let wrong = browser.post(
        "/account/second-factor",
        &[
            ("csrf", &account.csrf()),
            ("secret", &secret),
            ("code", "000000"),
            ("password", &pw),
        ],
    );
    assert_eq!(wrong.status, 422);
    let code = hallmonitor_collector::auth::totp_code(&secret, now()).unwrap();
    let on = browser.post(
        "/account/second-factor",
        &[
            ("csrf", &account.csrf()),
            ("secret", &secret),
            ("code", &code),
            ("password", &pw),
        ],
    );
    assert_eq!(on.status, 200, "{}", on.text());
    assert!(on.text().contains("Two-step sign-in is on"));

    let next = Client::new(&data, &collector);
    let first = next.sign_in("head", &pw);
    assert_eq!(first.status, 303);
    assert!(
        first
            .header("location")
            .unwrap()
            .starts_with("/login/second-factor")
    );
    let early = next.get("/devices");
    assert_eq!(early.status, 303, "not in before the code");
    assert!(
        early
            .header("location")
            .unwrap()
            .starts_with("/login/second-factor")
    );
    assert_eq!(
        next.post(
            "/login/second-factor",
            &[("code", "123456"), ("next", "/devices")]
        )
        .status,
        401
    );
    let code = hallmonitor_collector::auth::totp_code(&secret, now()).unwrap();
    let done = next.post(
        "/login/second-factor",
        &[("code", &code), ("next", "/devices")],
    );
    assert_eq!(done.status, 303);
    assert_eq!(done.header("location").as_deref(), Some("/devices"));
    assert_eq!(next.get("/devices").status, 200);
}

#[test]
fn settings_and_imports_through_the_console() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let tech_pw = add_user(&data, "tech1", "technician");
    let gov_pw = add_user(&data, "gov1", "governor");
    let tech = Client::new(&data, &collector);
    assert_eq!(tech.sign_in("tech1", &tech_pw).status, 303);
    let settings = tech.get("/settings");
    assert_eq!(settings.status, 200);
    let token = settings.csrf();

    // A new enrolment secret is shown once, and an agent enrols with it.
    let created = tech.post(
        "/settings/secrets",
        &[
            ("csrf", &token),
            ("site", "Cabot"),
            ("label", "year 7 laptops"),
            ("expires_in_days", "30"),
        ],
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let page = created.text();
    let secret = page
        .split("id=\"shown-once\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("hmes_"), "{secret}");
    assert!(
        !tech.get("/settings").text().contains(&secret),
        "shown only once"
    );
    let mut settings_for_agent = data.agent_settings(&collector, "e2e-console-secret");
    settings_for_agent.secret = secret;
    let agent = Agent::new(&settings_for_agent);
    let device = agent.enroll();
    assert!(device.starts_with("dev-"), "{device}");
    // Revoking it stops new enrolments; a second revoke is refused beside
    // the list.
    assert!(tech.get("/settings").text().contains("Revoke secret 2"));
    let revoked = tech.post(
        "/settings/secrets/2/revoke",
        &[("csrf", &token), ("site", "Cabot")],
    );
    assert_eq!(revoked.status, 303, "{}", revoked.text());
    let again = tech.post(
        "/settings/secrets/2/revoke",
        &[("csrf", &token), ("site", "Cabot")],
    );
    assert_eq!(again.status, 422);
    assert!(again.text().contains("already revoked"));
    let listed = text(
        &data
            .cli(&["enroll-secret", "list", "--format", "json"])
            .stdout,
    );
    assert!(listed.contains("revoked_at\": \"20"), "{listed}");
    let bad_days = tech.post(
        "/settings/secrets",
        &[
            ("csrf", &token),
            ("site", "Cabot"),
            ("expires_in_days", "soon"),
        ],
    );
    assert_eq!(bad_days.status, 422);
    assert!(bad_days.text().contains("Expires in"));

    // An API token gets a role no wider than its maker's: a technician
    // cannot make one that reads incidents.
    let tokens = || json(&data.cli(&["api-token", "list", "--format", "json"]));
    let widened = tech.post(
        "/settings/tokens",
        &[
            ("csrf", &token),
            ("site", "Cabot"),
            ("role", "dsl"),
            ("label", "x"),
        ],
    );
    assert_eq!(widened.status, 422, "{}", widened.text());
    assert!(widened.text().contains("Choose one of the roles offered"));
    assert_eq!(tokens()["tokens"].as_array().unwrap().len(), 0);
    let made = tech.post(
        "/settings/tokens",
        &[
            ("csrf", &token),
            ("site", "Cabot"),
            ("role", "technician"),
            ("label", "asset register"),
        ],
    );
    assert_eq!(made.status, 200, "{}", made.text());
    let api_token = made
        .text()
        .split("id=\"shown-once\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .to_owned();
    assert!(api_token.starts_with("hmapi_"), "{api_token}");
    assert_eq!(tokens()["tokens"][0]["role"], "technician");
    let bearer = format!("Authorization: Bearer {api_token}");
    let api = |client: &Client| client.request_with("GET", "/api/v1/devices", None, &[&bearer]);
    assert_eq!(api(&tech).status, 200);

    // A directory with a bad row is refused with its line and changes
    // nothing; a good one is imported.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("directory.csv");
    std::fs::write(
        &bad,
        "username,email,role\nj.smith,j.smith@cabot.sch.uk,staff\nx,,wizard\n",
    )
    .unwrap();
    let refused = tech.upload(
        "/mfa/import",
        &[("csrf", &token), ("site", "Cabot"), ("kind", "directory")],
        &bad,
    );
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(refused.text().contains("line 3"), "{}", refused.text());
    let listed = text(&data.cli(&["directory", "list", "--site", "Cabot"]).stdout);
    assert!(!listed.contains("j.smith"), "{listed}");
    let good = dir.path().join("good.csv");
    std::fs::write(
        &good,
        "username,email,role\nj.smith,j.smith@cabot.sch.uk,staff\n",
    )
    .unwrap();
    let imported = tech.upload(
        "/mfa/import",
        &[("csrf", &token), ("site", "Cabot"), ("kind", "directory")],
        &good,
    );
    assert_eq!(imported.status, 200, "{}", imported.text());
    let listed = text(&data.cli(&["directory", "list", "--site", "Cabot"]).stdout);
    assert!(listed.contains("j.smith"), "{listed}");
    let no_token = tech.upload(
        "/mfa/import",
        &[("site", "Cabot"), ("kind", "directory")],
        &good,
    );
    assert_eq!(no_token.status, 403);

    let gov = Client::new(&data, &collector);
    assert_eq!(gov.sign_in("gov1", &gov_pw).status, 303);
    assert_eq!(gov.get("/settings").status, 403);
    // The token works only while its maker could still make it.
    assert!(data.cli(&["users", "disable", "tech1"]).status.success());
    assert_eq!(api(&gov).status, 401, "the maker's account is disabled");
    assert_eq!(gov.get("/mfa").status, 403);
}

/// The audit rows of one action: (actor, target, detail, address).
fn audit_rows(data: &CollectorData, action: &str) -> Vec<(String, String, String, String)> {
    runtime().block_on(async {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(data.data.join("collector.db"))
                .busy_timeout(Duration::from_secs(10)),
        )
        .await
        .expect("collector database");
        let rows = sqlx::query_as(
            "SELECT actor, target, detail, address FROM audit_log WHERE action = ? ORDER BY id",
        )
        .bind(action)
        .fetch_all(&pool)
        .await
        .expect("reading the audit log");
        pool.close().await;
        rows
    })
}

/// A zip archive's files by name.
fn unzip(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("the download is a zip");
    (0..archive.len())
        .map(|n| {
            let mut file = archive.by_index(n).expect("a zip entry");
            let mut content = Vec::new();
            file.read_to_end(&mut content).expect("reading a zip entry");
            let name = file.name().expect("a zip entry's name").into_owned();
            (name, content)
        })
        .collect()
}

#[test]
fn a_dsl_downloads_the_evidence_as_a_zip_and_no_one_else_can() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let root = tempfile::tempdir().unwrap();
    let (incident, capture, image, _daemon) =
        incident_with_snapshot(&data, &collector, root.path());
    let dsl_pw = add_user(&data, "dsl1", "dsl");
    let tech_pw = add_user(&data, "tech1", "technician");
    let gov_pw = add_user(&data, "gov1", "governor");
    add_site(&data, "Elsewhere", "UTC");
    let other = data.cli(&[
        "users",
        "add",
        "dsl2",
        "--role",
        "dsl",
        "--sites",
        "Elsewhere",
    ]);
    assert!(other.status.success(), "{}", text(&other.stderr));
    let other_pw = text(&other.stdout)
        .rsplit_once("(shown once): ")
        .unwrap()
        .1
        .trim()
        .to_owned();
    let export = format!("/incidents/{incident}/export");

    // The incident page offers the download as a form with its token.
    let dsl = Client::new(&data, &collector);
    assert_eq!(dsl.sign_in("dsl1", &dsl_pw).status, 303);
    let page = dsl.get(&format!("/incidents/{incident}"));
    assert_eq!(page.status, 200);
    assert!(
        page.text()
            .contains(&format!("<form method=\"post\" action=\"{export}\"")),
        "{}",
        page.text()
    );
    let token = page.csrf();

    // Without the token, with a wrong one, or from another site: refused.
    assert_eq!(dsl.post(&export, &[]).status, 403);
    assert_eq!(dsl.post(&export, &[("csrf", "0000")]).status, 403);
    let foreign = dsl.post_from("https://evil.example", &export, &[("csrf", &token)]);
    assert_eq!(foreign.status, 403);
    assert!(!foreign.body.starts_with(b"PK"), "no archive in a refusal");

    // A technician and a governor are refused; a DSL of another school
    // finds no such incident, as on the incident page itself.
    let tech = Client::new(&data, &collector);
    assert_eq!(tech.sign_in("tech1", &tech_pw).status, 303);
    let tech_token = tech.get("/devices").csrf();
    let refused = tech.post(&export, &[("csrf", &tech_token)]);
    assert_eq!(refused.status, 403);
    assert!(refused.text().contains("Not allowed"), "{}", refused.text());
    let gov = Client::new(&data, &collector);
    assert_eq!(gov.sign_in("gov1", &gov_pw).status, 303);
    let gov_token = gov.get("/").csrf();
    assert_eq!(gov.post(&export, &[("csrf", &gov_token)]).status, 403);
    let elsewhere = Client::new(&data, &collector);
    assert_eq!(elsewhere.sign_in("dsl2", &other_pw).status, 303);
    let elsewhere_token = elsewhere.get("/incidents").csrf();
    let hidden = elsewhere.post(&export, &[("csrf", &elsewhere_token)]);
    assert_eq!(hidden.status, 404);
    assert!(!hidden.body.starts_with(b"PK"));
    assert_eq!(
        audit_rows(&data, "incident_exported"),
        [],
        "nothing exported yet"
    );

    // The DSL's download: a zip of the incident's folder, never cached.
    let download = dsl.post(&export, &[("csrf", &token)]);
    assert_eq!(download.status, 200, "{}", download.text());
    assert_eq!(
        download.header("content-type").as_deref(),
        Some("application/zip")
    );
    assert_eq!(
        download.header("content-disposition").as_deref(),
        Some(format!("attachment; filename=\"incident-{incident}-evidence.zip\"").as_str())
    );
    assert_eq!(
        download.header("cache-control").as_deref(),
        Some("no-store")
    );
    let files = unzip(&download.body);
    let folder = format!("incident-{incident}/");
    let hash = sha256_hex(&image);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            format!("{folder}SHA256SUMS").as_str(),
            &format!("{folder}images/{hash}.png"),
            &format!("{folder}metadata.json"),
        ]
    );
    assert_eq!(
        files[&format!("{folder}images/{hash}.png")],
        image,
        "the snapshot the agent captured, byte for byte"
    );
    let sums = String::from_utf8(files[&format!("{folder}SHA256SUMS")].clone()).unwrap();
    let mut summed = Vec::new();
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").expect("a sha256sum line");
        let content = files
            .get(&format!("{folder}{name}"))
            .unwrap_or_else(|| panic!("SHA256SUMS names {name}, not in the zip"));
        assert_eq!(sha256_hex(content), sum, "{name}");
        summed.push(name);
    }
    summed.sort();
    assert_eq!(
        summed,
        [format!("images/{hash}.png"), "metadata.json".into()]
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&files[&format!("{folder}metadata.json")]).unwrap();
    assert_eq!(metadata["schema"], "hallmonitor.incident_export.v1");
    assert_eq!(metadata["exported_by"], "console:dsl1");
    assert_eq!(metadata["exported_from"], "127.0.0.1");
    assert_eq!(metadata["incident"]["id"], incident);
    assert_eq!(metadata["captures"][0]["matched_text"], "hurt myself");

    // One audit row: who, from where, and which archive.
    let rows = audit_rows(&data, "incident_exported");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (actor, target, detail, address) = &rows[0];
    assert_eq!(actor, "console:dsl1");
    assert_eq!(target, &format!("incident {incident}"));
    assert_eq!(address, "127.0.0.1");
    assert!(
        detail.contains(&sha256_hex(&download.body)),
        "the archive's SHA-256 is recorded: {detail}"
    );
    let csrf_refusals = audit_rows(&data, "console_csrf_refused");
    assert!(
        csrf_refusals
            .iter()
            .any(|(actor, target, ..)| actor == "console:dsl1" && target == &export),
        "{csrf_refusals:?}"
    );
    let refusals = audit_rows(&data, "console_forbidden");
    assert!(
        refusals
            .iter()
            .any(|(actor, target, ..)| actor == "console:tech1" && target == &export),
        "{refusals:?}"
    );

    // A stored image altered on disk: nothing is exported, the page says
    // which capture, and no export is recorded.
    let stored = data.data.join("evidence").join(&hash[..2]).join(&hash);
    let mut sealed = std::fs::read(&stored).unwrap();
    let last = sealed.len() - 1;
    sealed[last] ^= 0xff;
    std::fs::write(&stored, sealed).unwrap();
    let damaged = dsl.post(&export, &[("csrf", &token)]);
    assert_eq!(damaged.status, 500);
    assert!(!damaged.body.starts_with(b"PK"), "no archive");
    assert!(
        damaged
            .text()
            .contains(&format!("capture {capture} failed its check")),
        "{}",
        damaged.text()
    );
    assert_eq!(audit_rows(&data, "incident_exported").len(), 1);
}

/// A page's text between two markers (for one table or section).
fn between<'a>(page: &'a str, start: &str, end: &str) -> &'a str {
    let from = page
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in {page}"));
    let rest = &page[from..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

#[test]
fn site_policies_are_checked_versioned_and_compared_in_the_console() {
    let data = CollectorData::init("Cabot");
    add_site(&data, "Dunmore", "UTC");
    let collector = data.start();
    let tech_pw = add_site_user(&data, "tech1", "technician", "Cabot");
    let dsl_pw = add_site_user(&data, "dsl1", "dsl", "Cabot");
    let gov_pw = add_user(&data, "gov1", "governor");
    let admin_pw = add_user(&data, "admin2", "admin");
    let history = || json(&data.cli(&["policy", "history", "--site", "Cabot", "--format", "json"]));

    let tech = Client::new(&data, &collector);
    assert_eq!(tech.sign_in("tech1", &tech_pw).status, 303);
    let page = tech.get("/settings/policy?site=Cabot");
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("No version saved yet"));
    let token = page.csrf();
    let save = |text: &str, comment: &str| {
        tech.post(
            "/settings/policy",
            &[
                ("csrf", &token),
                ("site", "Cabot"),
                ("text", text),
                ("comment", comment),
            ],
        )
    };

    let first = "extends = \"default\"\n[[rules]]\nid = \"local\"\ncategory = \"gambling\"\nseverity = 2\nphrases = [\"online casino\"]\n";
    let saved = save(first, "local slang");
    assert_eq!(saved.status, 303, "{}", saved.text());
    assert_eq!(
        saved.header("location").as_deref(),
        Some("/settings/policy?site=Cabot&saved=1")
    );
    assert_eq!(history()["current_version"], 1);

    // A mistake is refused with its line beside the field, the text kept,
    // and nothing stored.
    let bad = "extends = \"default\"\n[[rules]]\nid = \"x\"\nsevrity = 2\n";
    let refused = save(bad, "typo");
    assert_eq!(refused.status, 422, "{}", refused.text());
    let page = refused.text();
    let errors = between(&page, "id=\"policy-errors\"", "</div>");
    assert!(errors.contains("Line 4:"), "{errors}");
    assert!(
        page.contains("aria-describedby=\"policy-help policy-errors\""),
        "{page}"
    );
    assert!(page.contains("sevrity = 2"), "the refused text is kept");
    assert_eq!(history()["current_version"], 1, "nothing stored");

    // A good change (as a browser sends it, with CRLF) is version 2, saved
    // with LF, and audited with the account and address.
    let second = first.replace("\"online casino\"", "\"online casino\", \"bet now\"");
    let saved = save(&second.replace('\n', "\r\n"), "more slang");
    assert_eq!(saved.status, 303, "{}", saved.text());
    assert_eq!(history()["current_version"], 2);
    let shown = data.cli(&["policy", "show", "--site", "Cabot"]);
    assert_eq!(text(&shown.stdout), second);
    let admin = Client::new(&data, &collector);
    assert_eq!(admin.sign_in("admin2", &admin_pw).status, 303);
    let audit = admin.get("/audit?action=policy.set").text();
    let rows = between(&audit, "<tbody", "</tbody>");
    assert!(
        rows.contains("console:tech1") && rows.contains("127.0.0.1") && rows.contains("v2"),
        "{rows}"
    );

    // The page compares the newest version with the one before by default:
    // the changed line, marked in words.
    let page = tech.get("/settings/policy?site=Cabot").text();
    let diff = between(&page, "id=\"policy-diff\"", "</table>");
    assert!(
        page.contains("Changes from version 1 to version 2"),
        "{page}"
    );
    let removed = between(diff, "removed</td>", "</tr>");
    assert!(removed.contains("online casino") && !removed.contains("bet now"));
    let added = between(diff, "added</td>", "</tr>");
    assert!(added.contains("bet now"), "{diff}");
    assert!(added.contains("<td>6</td>"), "the line number: {added}");
    // Any version's text, and any two versions compared.
    let v1 = tech.get("/settings/policy?site=Cabot&version=1").text();
    let v1_text = between(&v1, "id=\"policy-version\"", "</pre>");
    assert!(v1_text.contains("online casino") && !v1_text.contains("bet now"));
    let same = tech.get("/settings/policy?site=Cabot&from=2&to=2").text();
    assert!(same.contains("the same text"), "{same}");
    assert_eq!(
        tech.get("/settings/policy?site=Cabot&version=9").status,
        404
    );

    // Reset to the default, as `policy reset` does.
    let reset = tech.post(
        "/settings/policy/reset",
        &[("csrf", &token), ("site", "Cabot")],
    );
    assert_eq!(reset.status, 303, "{}", reset.text());
    let versions = history();
    assert_eq!(versions["current_version"], 3);
    assert_eq!(versions["versions"][0]["default"], true);

    // Who may: a DSL of the site yes; a governor no; nobody for a site
    // that is not theirs, and nothing is stored there.
    let dsl = Client::new(&data, &collector);
    assert_eq!(dsl.sign_in("dsl1", &dsl_pw).status, 303);
    assert_eq!(dsl.get("/settings/policy?site=Cabot").status, 200);
    assert_eq!(tech.get("/settings/policy?site=Dunmore").status, 403);
    let elsewhere = tech.post(
        "/settings/policy",
        &[("csrf", &token), ("site", "Dunmore"), ("text", first)],
    );
    assert_eq!(elsewhere.status, 403);
    let dunmore = json(&data.cli(&["policy", "history", "--site", "Dunmore", "--format", "json"]));
    assert_eq!(dunmore["current_version"], 0);
    let gov = Client::new(&data, &collector);
    assert_eq!(gov.sign_in("gov1", &gov_pw).status, 303);
    assert_eq!(gov.get("/settings/policy?site=Cabot").status, 403);
    let gov_token = gov.get("/").csrf();
    assert_eq!(
        gov.post(
            "/settings/policy",
            &[("csrf", &gov_token), ("site", "Cabot"), ("text", first)]
        )
        .status,
        403
    );
    assert_eq!(history()["current_version"], 3);
}

/// A 90-minute graphical session that ended `days_ago` days ago.
fn past_session(days_ago: i64) -> hallmonitor_proto::v1::event::Body {
    use hallmonitor_proto::v1;
    let start = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days_ago);
    v1::event::Body::Session(v1::SessionEvent {
        phase: v1::session_event::Phase::End as i32,
        session_id: "s1".into(),
        account: "pupil1".into(),
        uid: 1001,
        kind: v1::session_event::Kind::Graphical as i32,
        seat: "seat0".into(),
        started_at: Some(hallmonitor_proto::Timestamp {
            seconds: start.as_second(),
            nanos: 0,
        }),
        ended_at: Some(hallmonitor_proto::Timestamp {
            seconds: start.as_second() + 90 * 60,
            nanos: 0,
        }),
        active_secs: 90 * 60,
    })
}

#[test]
fn activity_thresholds_and_retention_are_set_per_site_in_the_console() {
    let data = CollectorData::init("Cabot");
    add_site(&data, "Dunmore", "UTC");
    let collector = data.start();
    let tech_pw = add_site_user(&data, "tech1", "technician", "Cabot");
    let gov_pw = add_user(&data, "gov1", "governor");
    let admin_pw = add_user(&data, "admin2", "admin");

    // A device used for 90 minutes ten days ago: compliant under the
    // default 60 minutes in 28 days.
    let agent = Agent::with_config(
        &data.agent_settings(&collector, "e2e-console-thresholds"),
        "",
        "[sessions]\nsource = \"utmp\"\nutmp_path = \"/nonexistent/utmp\"\n",
    );
    let id = agent.enroll();
    enrolled_days_ago(&data, &id, 60);
    queue_now(&agent.data, vec![past_session(10)]);
    let _daemon = agent.start();
    let compliance = || {
        json(&data.cli(&["compliance", "check", "--device", &id, "--format", "json"]))["devices"][0]
            ["activity"]
            .clone()
    };
    wait_for("the session to arrive", WAIT, || {
        (compliance()["used_minutes"] == 90).then_some(())
    });
    assert_eq!(compliance()["status"], "compliant");

    let tech = Client::new(&data, &collector);
    assert_eq!(tech.sign_in("tech1", &tech_pw).status, 303);
    let page = tech.get("/settings/activity?site=Cabot");
    assert_eq!(page.status, 200, "{}", page.text());
    let in_force = page.text();
    let table = between(&in_force, "id=\"activity-in-force\"", "</table>");
    assert!(
        table.contains("<td>60</td><td>built-in default</td>"),
        "{table}"
    );
    let token = page.csrf();
    let save = |window: &str, required: &str, retention: &str| {
        tech.post(
            "/settings/activity",
            &[
                ("csrf", &token),
                ("site", "Cabot"),
                ("window_days", window),
                ("required_minutes", required),
                ("warning_days", "7"),
                ("retention_days", retention),
            ],
        )
    };

    // Bad values are refused with each field named, and change nothing.
    let refused = save("0", "an hour", "5000");
    assert_eq!(refused.status, 422, "{}", refused.text());
    let page = refused.text();
    for (field, message) in [
        ("window_days", "Window (days): from 1 to 365 days."),
        (
            "required_minutes",
            "Required logged-in minutes in the window: a whole number.",
        ),
        (
            "retention_days",
            "Keep evidence of closed incidents (days): from 30 to 3650 days.",
        ),
    ] {
        let error = between(&page, &format!("id=\"err-{field}\""), "</span>");
        assert!(error.contains(message), "{field}: {error}");
        assert!(
            page.contains(&format!("aria-describedby=\"hint-{field} err-{field}\"")),
            "{field}"
        );
    }
    assert!(
        page.contains("value=\"an hour\""),
        "the typed value is kept"
    );
    assert!(
        !tech
            .get("/settings/activity?site=Cabot")
            .text()
            .contains("set in the console")
    );
    assert_eq!(compliance()["status"], "compliant");

    // 120 minutes: the same device is non-compliant, in the compliance
    // report and on its console page (evaluated at once).
    let saved = save("28", "120", "30");
    assert_eq!(saved.status, 303, "{}", saved.text());
    let activity = compliance();
    assert_eq!(activity["status"], "non_compliant", "{activity}");
    assert_eq!(activity["required_minutes"], 120);
    let device_page = tech.get(&format!("/devices/{id}")).text();
    assert!(device_page.contains("Non-compliant"), "{device_page}");
    let page = tech.get("/settings/activity?site=Cabot").text();
    let table = between(&page, "id=\"activity-in-force\"", "</table>");
    assert!(
        table.contains("<td>120</td><td>set in the console</td>"),
        "{table}"
    );
    let admin = Client::new(&data, &collector);
    assert_eq!(admin.sign_in("admin2", &admin_pw).status, 303);
    let audit = admin.get("/audit?action=site_settings").text();
    let rows = between(&audit, "<tbody", "</tbody>");
    assert!(
        rows.contains("required_minutes: 60 → 120")
            && rows.contains("retention_days: 90 → 30")
            && rows.contains("console:tech1"),
        "{rows}"
    );

    // Cleared: collector.toml's values again.
    let cleared = tech.post(
        "/settings/activity/clear",
        &[("csrf", &token), ("site", "Cabot")],
    );
    assert_eq!(cleared.status, 303, "{}", cleared.text());
    assert_eq!(compliance()["status"], "compliant");
    assert_eq!(compliance()["required_minutes"], 60);

    // Only the viewer's sites; never governors. A technician sees each
    // site's routes on the settings page (administrators edit them).
    assert_eq!(tech.get("/settings/activity?site=Dunmore").status, 403);
    assert_eq!(
        tech.post(
            "/settings/activity",
            &[
                ("csrf", &token),
                ("site", "Dunmore"),
                ("window_days", "28"),
                ("required_minutes", "120"),
                ("warning_days", "7"),
                ("retention_days", "30"),
            ],
        )
        .status,
        403
    );
    let gov = Client::new(&data, &collector);
    assert_eq!(gov.sign_in("gov1", &gov_pw).status, 303);
    assert_eq!(gov.get("/settings/activity?site=Cabot").status, 403);
    let settings = tech.get("/settings").text();
    let routes = between(&settings, "id=\"routes-1\"", "</table>");
    assert!(routes.contains("capture_severe"), "{routes}");
    assert!(
        routes.contains("Notification routes of Cabot (collector.toml)"),
        "{routes}"
    );
    assert!(
        !settings.contains("action=\"/settings/routes\""),
        "{settings}"
    );
    assert!(settings.contains("/settings/activity?site=Cabot"));
}

/// An incident at another site: an agent enrolled with that site's own
/// secret sends one severe capture. Returns the incident's id.
fn incident_at(
    data: &CollectorData,
    collector: &RunningCollector,
    site: &str,
) -> (i64, hallmonitor_e2e::Process) {
    let secret = data.cli(&["enroll-secret", "create", "--site", site]);
    assert!(secret.status.success(), "{}", text(&secret.stderr));
    let mut settings = data.agent_settings(collector, &format!("e2e-{site}"));
    settings.site = site.to_owned();
    settings.secret = text(&secret.stdout).trim().to_owned();
    let agent = Agent::new(&settings);
    agent.enroll();
    queue_now(&agent.data, vec![severe_capture("pupil.eight", &png(90))]);
    let daemon = agent.start();
    let incident = wait_for("the other site's incident", WAIT, || {
        let list = json(&data.cli(&["incidents", "list", "--site", site, "--format", "json"]));
        list["incidents"].as_array()?.first().cloned()
    });
    std::mem::forget(agent);
    (incident["id"].as_i64().unwrap(), daemon)
}

/// The value of a `<select>` option by its label.
fn option_value(page: &str, label: &str) -> String {
    let end = page
        .find(&format!("\">{label}</option>"))
        .unwrap_or_else(|| panic!("no option {label} in {page}"));
    let start = page[..end].rfind("value=\"").unwrap() + 7;
    page[start..end].to_owned()
}

#[test]
fn a_dsl_reads_the_audit_log_of_their_own_site_only() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let root = tempfile::tempdir().unwrap();
    add_site(&data, "Dunmore", "Europe/Dublin");
    let (cabot_incident, _, _, _cabot_agent) =
        incident_with_snapshot(&data, &collector, root.path());
    let (dunmore_incident, _dunmore_agent) = incident_at(&data, &collector, "Dunmore");
    let cabot_pw = add_site_user(&data, "dsl.cabot", "dsl", "Cabot");
    let dunmore_pw = add_site_user(&data, "dsl.dunmore", "dsl", "Dunmore");
    let admin_pw = add_user(&data, "admin2", "admin");

    let cabot = Client::new(&data, &collector);
    assert_eq!(cabot.sign_in("dsl.cabot", &cabot_pw).status, 303);
    assert_eq!(
        cabot.get(&format!("/incidents/{cabot_incident}")).status,
        200
    );
    let dunmore = Client::new(&data, &collector);
    assert_eq!(dunmore.sign_in("dsl.dunmore", &dunmore_pw).status, 303);
    assert_eq!(
        dunmore
            .get(&format!("/incidents/{dunmore_incident}"))
            .status,
        200
    );
    assert_eq!(
        cabot.get(&format!("/incidents/{dunmore_incident}")).status,
        404,
        "another site's incident"
    );

    // Cabot's DSL reads Cabot's incident views, and nothing of Dunmore's:
    // not its views, not its staff, not the collector-wide rows.
    let page = cabot.get("/audit?action=incident_viewed");
    assert_eq!(page.status, 200);
    let rows = between(&page.text(), "<tbody", "</tbody>").to_owned();
    assert!(
        rows.contains(&format!("incident {cabot_incident}")),
        "{rows}"
    );
    assert!(rows.contains("console:dsl.cabot"), "{rows}");
    assert!(
        !rows.contains(&format!("incident {dunmore_incident}")),
        "{rows}"
    );
    let everything = cabot.get("/audit").text();
    let rows = between(&everything, "<tbody", "</tbody>");
    assert!(rows.contains("Cabot"), "{rows}");
    for other in ["dsl.dunmore", "Dunmore", "admin2", "collector-wide"] {
        assert!(!rows.contains(other), "{other} in {rows}");
    }
    assert!(
        !everything.contains(">Dunmore</option>"),
        "no other site to pick"
    );
    let dunmore_id = {
        let admin = Client::new(&data, &collector);
        assert_eq!(admin.sign_in("admin2", &admin_pw).status, 303);
        let all = admin.get("/audit?action=incident_viewed").text();
        let rows = between(&all, "<tbody", "</tbody>");
        assert!(
            rows.contains(&format!("incident {cabot_incident}"))
                && rows.contains(&format!("incident {dunmore_incident}")),
            "an account of every site reads both: {rows}"
        );
        let id = option_value(&all, "Dunmore");
        let only = admin.get(&format!("/audit?site={id}&action=incident_viewed"));
        let rows = between(&only.text(), "<tbody", "</tbody>").to_owned();
        assert!(
            rows.contains(&format!("incident {dunmore_incident}")),
            "{rows}"
        );
        assert!(
            !rows.contains(&format!("incident {cabot_incident}")),
            "{rows}"
        );
        let wide = admin.get("/audit?site=collector").text();
        assert!(wide.contains("collector initialised"), "{wide}");
        assert!(wide.contains("user admin2"), "{wide}");
        id
    };
    assert_eq!(cabot.get(&format!("/audit?site={dunmore_id}")).status, 404);
    assert_eq!(cabot.get("/audit?site=collector").status, 404);
}

#[test]
fn error_pages_keep_the_navigation_of_whoever_is_signed_in() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let tech_pw = add_user(&data, "tech1", "technician");
    let nav = "<nav aria-label=\"Main\">";

    let tech = Client::new(&data, &collector);
    assert_eq!(tech.sign_in("tech1", &tech_pw).status, 303);
    for path in ["/no-such-page", "/devices/no-such-device", "/flags/999999"] {
        let missing = tech.get(path);
        assert_eq!(missing.status, 404, "{path}");
        let page = missing.text();
        assert!(page.contains("Page not found"), "{path}: {page}");
        assert!(
            page.contains(nav) && page.contains("href=\"/devices\""),
            "{path}: {page}"
        );
        assert!(
            page.contains("tech1") && page.contains("Sign out"),
            "{path}: {page}"
        );
    }
    let refused = tech.get("/incidents");
    assert_eq!(refused.status, 403);
    let page = refused.text();
    assert!(page.contains("Not allowed") && page.contains(nav), "{page}");
    assert!(
        !page.contains("href=\"/incidents\""),
        "the navigation is the viewer's own: {page}"
    );
    // The sign-out form on an error page works.
    let token = refused.csrf();
    assert_eq!(tech.post("/logout", &[("csrf", &token)]).status, 303);
    let after = tech.get("/no-such-page");
    assert_eq!(after.status, 404);
    assert!(!after.text().contains(nav), "{}", after.text());

    // Signed out, or with a cookie that names no session: anonymous.
    let stranger = Client::new(&data, &collector);
    let missing = stranger.get("/no-such-page");
    assert_eq!(missing.status, 404);
    assert!(!missing.text().contains(nav) && !missing.text().contains("Sign out"));
    let forged = stranger.request_with(
        "GET",
        "/no-such-page",
        None,
        &["Cookie: __Host-hm_session=not-a-session"],
    );
    assert_eq!(forged.status, 404);
    assert!(!forged.text().contains(nav), "{}", forged.text());
    assert!(!forged.text().contains("csrf"), "{}", forged.text());
}
