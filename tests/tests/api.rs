//! The JSON API over real HTTPS with curl against a running collector and
//! a real agent: tokens carry a role and get exactly that role's part,
//! flag actions reach the agent, incident reads are audited, and every
//! answer matches the OpenAPI document the collector serves.

use std::time::Duration;

use hallmonitor_e2e::fixtures::*;
use hallmonitor_e2e::{Agent, CollectorData, RunningCollector, text, wait_for};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

struct Api {
    base: String,
    ca: std::path::PathBuf,
}

impl Api {
    fn new(data: &CollectorData, collector: &RunningCollector) -> Api {
        Api {
            base: format!("https://localhost:{}", collector.api.port()),
            ca: data.data.join("pki/ca.crt"),
        }
    }

    /// (status, body as JSON) of one request; `token` None sends none.
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut command = std::process::Command::new("curl");
        command
            .args([
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "-X",
                method,
                "--cacert",
            ])
            .arg(&self.ca);
        if let Some(token) = token {
            command.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        if let Some(body) = body {
            command.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        let output = command
            .arg(format!("{}{path}", self.base))
            .output()
            .expect("curl runs");
        assert!(
            output.status.success(),
            "curl {path}: {}",
            text(&output.stderr)
        );
        let out = text(&output.stdout);
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call("GET", path, Some(token), None)
    }
}

fn token(data: &CollectorData, role: &str) -> String {
    let created = data.cli(&[
        "api-token",
        "create",
        "--site",
        "Cabot",
        "--role",
        role,
        "--label",
        role,
    ]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    text(&created.stdout).trim().to_owned()
}

/// Checks `value` against `schema` from `document` (the subset of JSON
/// Schema utoipa writes: $ref, oneOf/anyOf/allOf, type, properties,
/// required, items). Also refuses a property the schema does not name,
/// so a field added to a response without its description fails here.
fn conforms(document: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap();
        let target = &document["components"]["schemas"][name];
        assert!(!target.is_null(), "{reference} is not in the document");
        return conforms(document, target, value, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let errors: Vec<String> = options
                .iter()
                .filter_map(|s| conforms(document, s, value, at).err())
                .collect();
            if errors.len() == options.len() {
                return Err(format!("{at}: matches none of {key}: {errors:?}"));
            }
            return Ok(());
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            conforms(document, s, value, at)?;
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
        if !ok {
            return Err(format!("{at}: {actual} where the document says {types:?}"));
        }
    }
    if let (Some(object), Some(properties)) = (value.as_object(), schema["properties"].as_object())
    {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                return Err(format!("{at}: required '{name}' is missing"));
            }
        }
        for (name, field) in object {
            let Some(described) = properties.get(name) else {
                return Err(format!("{at}: '{name}' is not in the document"));
            };
            conforms(document, described, field, &format!("{at}.{name}"))?;
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (n, item) in items.iter().enumerate() {
            conforms(document, schema, item, &format!("{at}[{n}]"))?;
        }
    }
    Ok(())
}

/// Asserts a response body matches what the document says `operation`
/// answers with `status`.
fn assert_documented(document: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let operation = &document["paths"][path][method];
    assert!(
        !operation.is_null(),
        "{method} {path} is not in the document"
    );
    let response = &operation["responses"][status.to_string()];
    assert!(
        !response.is_null(),
        "{method} {path} does not document {status}"
    );
    let schema = &response["content"]["application/json"]["schema"];
    if let Err(e) = conforms(document, schema, body, "body") {
        panic!("{method} {path} → {status} does not match the document: {e}\n{body:#}");
    }
}

fn audit_rows(data: &CollectorData, action: &str) -> Vec<(String, String)> {
    runtime().block_on(async {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(data.data.join("collector.db")),
        )
        .await
        .unwrap();
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT actor, target FROM audit_log WHERE action = ? ORDER BY id")
                .bind(action)
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        rows
    })
}

#[test]
fn tokens_get_their_roles_part_and_every_answer_matches_the_document() {
    let data = CollectorData::init("Cabot");
    data.set_config("evaluate_every_secs", "1");
    let collector = data.start();
    let api = Api::new(&data, &collector);

    // The document is served without a token and is the one the binary
    // prints (and docs/openapi.json holds, see the collector's unit test).
    let (code, document) = api.call("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(code, 200);
    let printed: Value = serde_json::from_slice(&data.cli(&["openapi"]).stdout).unwrap();
    assert_eq!(document, printed);

    // A real agent with one severe capture, enrolled long enough ago for
    // the activity rule to open a device_inactive flag.
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-api"));
    let device = agent.enroll();
    let image = png(90);
    queue_now(&agent.data, vec![severe_capture("pupil.nine", &image)]);
    enrolled_days_ago(&data, &device, 60);
    let _daemon = agent.start();

    let technician = token(&data, "technician");
    let dsl = token(&data, "dsl");
    let governor = token(&data, "governor");

    // No token, a wrong one: 401 with a JSON reason.
    let (code, body) = api.call("GET", "/api/v1/devices", None, None);
    assert_eq!(code, 401);
    assert_documented(&document, "/api/v1/devices", "get", 401, &body);
    assert_eq!(api.get("/api/v1/devices", "hmapi_wrong").0, 401);
    let (code, body) = api.get("/api/v1/no-such-thing", &technician);
    assert_eq!((code, body["error"].is_string()), (404, true));

    let flag = wait_for("the device_inactive flag", WAIT, || {
        let (_, list) = api.get("/api/v1/flags", &technician);
        list["flags"]
            .as_array()?
            .iter()
            .find(|f| f["device_id"] == device.as_str())
            .cloned()
    });
    let (code, list) = api.get("/api/v1/flags", &technician);
    assert_documented(&document, "/api/v1/flags", "get", code, &list);

    let (code, devices) = api.get("/api/v1/devices?limit=5", &technician);
    assert_eq!(code, 200, "{devices}");
    assert_documented(&document, "/api/v1/devices", "get", code, &devices);
    assert_eq!(devices["devices"][0]["id"], device.as_str());
    let (code, bad) = api.get("/api/v1/devices?status=sideways", &technician);
    assert_eq!(code, 400);
    assert!(
        bad["error"].as_str().unwrap().starts_with("status:"),
        "{bad}"
    );
    assert_eq!(
        api.get("/api/v1/devices?site=Elsewhere", &technician).0,
        404
    );

    let (code, one) = api.get(&format!("/api/v1/devices/{device}"), &technician);
    assert_eq!(code, 200, "{one}");
    assert_documented(&document, "/api/v1/devices/{id}", "get", code, &one);
    assert_eq!(one["compliance"]["activity"]["status"], "non_compliant");
    let (code, report) = api.get("/api/v1/compliance", &technician);
    assert_documented(&document, "/api/v1/compliance", "get", code, &report);
    assert_eq!(report["schema"], "hallmonitor.compliance.v1");
    assert_eq!(report["compliant"], false);
    let (code, pairs) = api.get("/api/v1/mfa", &technician);
    assert_documented(&document, "/api/v1/mfa", "get", code, &pairs);
    let (code, sent) = api.get("/api/v1/notifications", &technician);
    assert_documented(&document, "/api/v1/notifications", "get", code, &sent);

    // A technician token reads no incident; a governor token reads no
    // device; each refusal is audited.
    let (code, body) = api.get("/api/v1/incidents", &technician);
    assert_eq!(code, 403);
    assert_documented(&document, "/api/v1/incidents", "get", 403, &body);
    for path in [
        "/api/v1/devices",
        "/api/v1/flags",
        "/api/v1/incidents",
        "/api/v1/compliance",
    ] {
        assert_eq!(api.get(path, &governor).0, 403, "governor at {path}");
    }
    assert!(audit_rows(&data, "api_forbidden").len() >= 5);

    // Approving the disable reaches the real agent, which confirms.
    let id = flag["id"].as_i64().unwrap();
    let path = format!("/api/v1/flags/{id}/approve");
    let (code, approved) = api.call("POST", &path, Some(&technician), None);
    assert_eq!(code, 200, "{approved}");
    assert_documented(
        &document,
        "/api/v1/flags/{id}/{action}",
        "post",
        code,
        &approved,
    );
    assert_eq!(approved["state"], "disable_approved");
    wait_for("the agent's confirmation", WAIT, || {
        let (_, list) = api.get("/api/v1/flags?state=disabled", &technician);
        list["flags"]
            .as_array()?
            .iter()
            .find(|f| f["id"] == id)
            .cloned()
    });
    let (code, refused) = api.call("POST", &path, Some(&technician), Some("{}"));
    assert_eq!(code, 409, "{refused}");
    assert_documented(
        &document,
        "/api/v1/flags/{id}/{action}",
        "post",
        409,
        &refused,
    );
    let (code, _) = api.call(
        "POST",
        &format!("/api/v1/flags/{id}/explode"),
        Some(&technician),
        None,
    );
    assert_eq!(code, 400);
    assert!(
        audit_rows(&data, "flag_approved")
            .iter()
            .any(|(actor, _)| actor.starts_with("api-token:")),
        "the action is audited under the token"
    );

    // A dsl token reads incidents, and each read is audited first.
    let incident = wait_for("the incident", WAIT, || {
        let (_, list) = api.get("/api/v1/incidents", &dsl);
        list["incidents"].as_array()?.first().cloned()
    });
    let (code, list) = api.get("/api/v1/incidents", &dsl);
    assert_documented(&document, "/api/v1/incidents", "get", code, &list);
    let (code, shown) = api.get(&format!("/api/v1/incidents/{}", incident["id"]), &dsl);
    assert_eq!(code, 200, "{shown}");
    assert_documented(&document, "/api/v1/incidents/{id}", "get", code, &shown);
    assert_eq!(shown["captures"][0]["matched_text"], "hurt myself");
    assert_eq!(shown["captures"][0]["image_sha256"], sha256_hex(&image));
    let viewed = audit_rows(&data, "incident_viewed");
    assert!(
        viewed
            .iter()
            .any(|(actor, target)| actor.starts_with("api-token:")
                && *target == format!("incident {}", incident["id"])),
        "{viewed:?}"
    );

    // A revoked token stops working at once.
    let tokens = json(&data.cli(&["api-token", "list", "--format", "json"]));
    let dsl_id = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "dsl")
        .unwrap()["id"]
        .to_string();
    assert!(
        data.cli(&["api-token", "revoke", "--site", "Cabot", &dsl_id])
            .status
            .success()
    );
    assert_eq!(api.get("/api/v1/incidents", &dsl).0, 401);
}
