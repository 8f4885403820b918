//! `hallmonitor-agent doctor`, end to end: an enrolled agent and a running
//! collector pass (the test machine has no PAM hook: a warning at most), a
//! stopped collector is a failure naming reachability, and a wrong CA
//! fingerprint in the configuration is named as a pin mismatch.

use hallmonitor_e2e::*;

fn doctor_json(agent: &Agent) -> (Option<i32>, Value) {
    let output = agent.cli(&["doctor", "--format", "json"]);
    let json: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&output.stdout), text(&output.stderr)));
    (output.status.code(), json)
}

fn finding<'a>(report: &'a Value, check: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} finding in {report:#}"))
}

#[test]
fn doctor_passes_then_names_an_unreachable_collector_and_a_wrong_pin() {
    let data = CollectorData::init("Doctor Primary");
    let collector = data.start();
    let mut settings = data.agent_settings(&collector, "e2e-doctor");
    let agent = Agent::new(&settings);
    let id = agent.enroll();

    let (code, report) = doctor_json(&agent);
    assert_eq!(report["schema"], "hallmonitor.doctor.v1");
    assert!(matches!(code, Some(0 | 1)), "{code:?} {report:#}");
    assert_eq!(report["worst"], if code == Some(0) { "ok" } else { "warn" });
    for check in ["configuration", "identity", "collector"] {
        assert_eq!(finding(&report, check)["outcome"], "ok", "{report:#}");
    }
    assert!(
        finding(&report, "identity")["detail"]
            .as_str()
            .unwrap()
            .contains(&id)
    );
    // The text form: one line per check.
    let plain = text(&agent.cli(&["doctor"]).stdout);
    assert!(
        plain.lines().any(|l| l.starts_with("ok    collector ")),
        "{plain}"
    );
    // No secret is printed.
    assert!(!plain.contains(&settings.secret), "{plain}");

    // A wrong pin, named as such while the collector runs.
    let right = settings.ca_fingerprint.clone();
    settings.ca_fingerprint = "ab".repeat(32);
    agent.write_config(&settings);
    let (code, report) = doctor_json(&agent);
    assert_eq!(code, Some(2), "{report:#}");
    let collector_finding = finding(&report, "collector");
    assert_eq!(collector_finding["outcome"], "fail");
    assert!(
        collector_finding["detail"]
            .as_str()
            .unwrap()
            .contains("pin mismatch"),
        "{report:#}"
    );
    settings.ca_fingerprint = right;
    agent.write_config(&settings);

    // The collector stopped: a failure naming the connection.
    drop(collector);
    let (code, report) = doctor_json(&agent);
    assert_eq!(code, Some(2), "{report:#}");
    assert_eq!(report["worst"], "fail");
    let collector_finding = finding(&report, "collector");
    assert_eq!(collector_finding["outcome"], "fail");
    let detail = collector_finding["detail"].as_str().unwrap();
    assert!(
        detail.contains("refused") || detail.contains("unreachable"),
        "{report:#}"
    );
    // The other checks still ran.
    assert_eq!(finding(&report, "identity")["outcome"], "ok");
}
