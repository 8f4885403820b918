//! Identity-provider sign-in log exports, as evidence of completed two-step
//! sign-ins for the 2FA-freshness rule:
//!
//! - `entra-csv`: the Microsoft Entra admin center's sign-in log CSV
//!   download (columns such as `Date (UTC)`, `Request ID`, `Username`,
//!   `Status`, `Authentication requirement`, `Device ID`, `Device`);
//! - `entra-json`: its JSON download, or the Graph `auditLogs/signIns`
//!   response (`{"value": [...]}`), with `id`, `createdDateTime`,
//!   `userPrincipalName`, `status.errorCode`, `authenticationRequirement`,
//!   `authenticationDetails`, `deviceDetail.deviceId/displayName`;
//! - `google-csv`: a Google Workspace login audit export (`Event Name`,
//!   `User`, `Date`, `Login Challenge Method`, optionally a device column).
//!
//! Every row becomes a [`SignIn`]; whether it counts (successful and
//! multi-factor) is decided by the caller, which also counts what it skips.
//! Times carry their own offset (or are UTC where the column says so), so
//! exports in several time zones compare correctly. A time further ahead
//! of the collector's clock than the 2FA rule allows
//! ([`MAX_CLOCK_SKEW`](crate::rules::mfa::MAX_CLOCK_SKEW)) refuses the file,
//! naming its line, like any other bad row.

use jiff::Timestamp;
use serde_json::Value;

use crate::directory::{CsvTable, ImportError};
use crate::rules::mfa::check_completion_time;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "kebab-case")]
pub enum SigninFormat {
    EntraCsv,
    EntraJson,
    GoogleCsv,
}

impl SigninFormat {
    pub fn source(self) -> &'static str {
        match self {
            SigninFormat::EntraCsv | SigninFormat::EntraJson => "entra",
            SigninFormat::GoogleCsv => "google",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignIn {
    /// The provider's id of the sign-in (or a digest of the row when it has
    /// none), so importing the same export twice adds nothing.
    pub external_id: String,
    pub at: Timestamp,
    /// User principal name or email, lower-cased.
    pub account: String,
    pub succeeded: bool,
    pub multi_factor: bool,
    pub method: String,
    pub device_id: String,
    pub device_name: String,
    /// Where in the file it came from, for listing unmapped rows.
    pub line: u64,
}

/// Reads an export whole; `now` is the collector's clock, which no sign-in
/// may be ahead of (beyond the allowed skew).
pub fn parse(
    format: SigninFormat,
    bytes: &[u8],
    file: &str,
    now: Timestamp,
) -> Result<Vec<SignIn>, ImportError> {
    match format {
        SigninFormat::EntraCsv => entra_csv(bytes, file, now),
        SigninFormat::EntraJson => entra_json(bytes, file, now),
        SigninFormat::GoogleCsv => google_csv(bytes, file, now),
    }
}

/// RFC 3339 with an offset, or a plain date-time taken as UTC (the Entra
/// column says "(UTC)").
fn instant(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if let Ok(t) = text.parse::<Timestamp>() {
        return Some(t);
    }
    let text = text.trim_end_matches(" UTC").trim_end_matches(" GMT");
    let civil: jiff::civil::DateTime = text.replace(' ', "T").parse().ok()?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// A CSV cell as the instant of a sign-in, or the error naming its line
/// and column.
fn csv_instant(
    table: &CsvTable,
    line: u64,
    column: usize,
    text: &str,
    now: Timestamp,
) -> Result<Timestamp, ImportError> {
    let at = instant(text)
        .ok_or_else(|| table.error(line, column, format!("'{text}' is not a date and time")))?;
    check_completion_time(at, now)
        .map_err(|e| table.error(line, column, format!("'{text}': {e}")))?;
    Ok(at)
}

fn entra_csv(bytes: &[u8], file: &str, now: Timestamp) -> Result<Vec<SignIn>, ImportError> {
    let table = CsvTable::read(bytes, file)?;
    let date = table.require(&["Date (UTC)", "Date", "createdDateTime"])?;
    let id = table.require(&["Request ID", "Id", "Sign-in ID"])?;
    let user = table.require(&["Username", "User principal name", "userPrincipalName"])?;
    let status = table.require(&["Status"])?;
    let requirement =
        table.require(&["Authentication requirement", "authenticationRequirement"])?;
    let method = table.column(&[
        "Multifactor authentication auth method",
        "Authentication method",
    ]);
    let device_id = table.column(&["Device ID", "deviceId"]);
    let device_name = table.column(&["Device", "Device name", "displayName"]);
    let mut out = Vec::with_capacity(table.rows.len());
    for (line, f) in &table.rows {
        let at = csv_instant(&table, *line, date, &f[date], now)?;
        if f[id].is_empty() {
            return Err(table.error(*line, id, "empty sign-in id"));
        }
        out.push(SignIn {
            external_id: f[id].clone(),
            at,
            account: f[user].to_lowercase(),
            succeeded: f[status].eq_ignore_ascii_case("success"),
            multi_factor: f[requirement].to_lowercase().starts_with("multi"),
            method: method.map(|c| f[c].clone()).unwrap_or_default(),
            device_id: device_id.map(|c| f[c].clone()).unwrap_or_default(),
            device_name: device_name.map(|c| f[c].clone()).unwrap_or_default(),
            line: *line,
        });
    }
    Ok(out)
}

fn entra_json(bytes: &[u8], file: &str, now: Timestamp) -> Result<Vec<SignIn>, ImportError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ImportError {
        file: file.into(),
        line: e.line() as u64,
        column: None,
        message: format!("not JSON: {e}"),
    })?;
    let records = match &value {
        Value::Array(items) => items,
        Value::Object(o) => match o.get("value") {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(ImportError {
                    file: file.into(),
                    line: 1,
                    column: None,
                    message: "expected an array of sign-ins or a Graph response with \"value\""
                        .into(),
                });
            }
        },
        _ => {
            return Err(ImportError {
                file: file.into(),
                line: 1,
                column: None,
                message: "expected an array of sign-ins".into(),
            });
        }
    };
    let mut out = Vec::with_capacity(records.len());
    for (n, r) in records.iter().enumerate() {
        // JSON has no useful line per record: report the record number.
        let problem = |field: &str, why: &str| ImportError {
            file: file.into(),
            line: 0,
            column: None,
            message: format!("record {}: {field}: {why}", n + 1),
        };
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        let at = r["createdDateTime"]
            .as_str()
            .and_then(instant)
            .ok_or_else(|| problem("createdDateTime", "missing or not a date and time"))?;
        check_completion_time(at, now).map_err(|e| problem("createdDateTime", &e.to_string()))?;
        let id = text(&r["id"]);
        if id.is_empty() {
            return Err(problem("id", "missing"));
        }
        let methods: Vec<String> = r["authenticationDetails"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["succeeded"] == true)
            .filter_map(|d| d["authenticationMethod"].as_str())
            .filter(|m| !m.eq_ignore_ascii_case("password"))
            .map(str::to_owned)
            .collect();
        out.push(SignIn {
            external_id: id,
            at,
            account: text(&r["userPrincipalName"]).to_lowercase(),
            succeeded: r["status"]["errorCode"].as_i64() == Some(0),
            multi_factor: text(&r["authenticationRequirement"]) == "multiFactorAuthentication",
            method: methods.join(", "),
            device_id: text(&r["deviceDetail"]["deviceId"]),
            device_name: text(&r["deviceDetail"]["displayName"]),
            line: n as u64 + 1,
        });
    }
    Ok(out)
}

/// Second-factor challenge methods in Google's login audit.
const GOOGLE_SECOND_FACTORS: [&str; 7] = [
    "google authenticator",
    "backup code",
    "security key",
    "google prompt",
    "text message",
    "voice",
    "passkey",
];

fn google_csv(bytes: &[u8], file: &str, now: Timestamp) -> Result<Vec<SignIn>, ImportError> {
    let table = CsvTable::read(bytes, file)?;
    let event = table.require(&["Event Name", "Event"])?;
    let user = table.require(&["User", "Actor", "Email"])?;
    let date = table.require(&["Date", "Time"])?;
    let challenge = table.require(&["Login Challenge Method", "Challenge Method"])?;
    let device_id = table.column(&["Device ID"]);
    let device_name = table.column(&["Device Name", "Device", "Hostname"]);
    let mut out = Vec::with_capacity(table.rows.len());
    for (line, f) in &table.rows {
        let at = csv_instant(&table, *line, date, &f[date], now)?;
        let methods = f[challenge].to_lowercase();
        let second: Vec<&str> = GOOGLE_SECOND_FACTORS
            .iter()
            .copied()
            .filter(|m| methods.contains(m))
            .collect();
        let event_name = f[event].to_lowercase();
        // Google exports carry no sign-in id: the row's content is its id.
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!(
                "{}|{}|{}|{}",
                f[user].to_lowercase(),
                at,
                event_name,
                methods
            )
            .as_bytes(),
        );
        out.push(SignIn {
            external_id: digest.as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            at,
            account: f[user].to_lowercase(),
            succeeded: event_name.contains("success") || event_name == "login",
            multi_factor: !second.is_empty(),
            method: second.join(", "),
            device_id: device_id.map(|c| f[c].clone()).unwrap_or_default(),
            device_name: device_name.map(|c| f[c].clone()).unwrap_or_default(),
            line: *line,
        });
    }
    Ok(out)
}

/// What an import did, for the person running it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ImportReport {
    pub rows: u64,
    pub not_successful: u64,
    pub not_multi_factor: u64,
    /// Counted two-step sign-ins that matched a device.
    pub mapped: u64,
    /// Two-step sign-ins that matched no device: stored without one and
    /// listed here (line, account, device as the export names it).
    pub unmapped: Vec<(u64, String, String)>,
    /// New evidence stored (the rest was already held).
    pub new: u64,
}

/// Imports an export for a site: counts what does not count, maps accounts
/// through the site directory (email → username) and rows to devices (the
/// export's device id against the device id, machine id or serial recorded
/// at enrolment, else its device name against the hostname), stores the
/// evidence in one transaction and re-evaluates the devices it touched.
pub async fn import(
    store: &dyn crate::store::Store,
    config: &crate::config::CollectorConfig,
    site: &crate::model::Site,
    rows: Vec<SignIn>,
    source: &str,
    now: Timestamp,
) -> crate::store::Result<ImportReport> {
    use crate::model::DeviceId;
    let directory = store.directory(site.id).await?;
    let devices = store.list_devices(Some(site.id)).await?;
    let same = |a: &str, b: &str| !a.is_empty() && a.eq_ignore_ascii_case(b);
    let short = |h: &str| h.split('.').next().unwrap_or(h).to_owned();
    let mut report = ImportReport {
        rows: rows.len() as u64,
        ..ImportReport::default()
    };
    let mut completions = Vec::new();
    let mut touched: Vec<DeviceId> = Vec::new();
    for row in rows {
        if !row.succeeded {
            report.not_successful += 1;
            continue;
        }
        if !row.multi_factor {
            report.not_multi_factor += 1;
            continue;
        }
        let account = directory
            .iter()
            .find(|a| same(&a.email, &row.account) || same(&a.username, &row.account))
            .map(|a| a.username.clone())
            .unwrap_or_else(|| row.account.split('@').next().unwrap_or("").to_owned());
        let device = devices
            .iter()
            .find(|d| {
                same(&row.device_id, d.id.as_str())
                    || same(&row.device_id, &d.facts.machine_id)
                    || same(&row.device_id, &d.facts.serial_number)
            })
            .or_else(|| {
                devices.iter().find(|d| {
                    same(&row.device_name, &d.hostname)
                        || same(&short(&row.device_name), &short(&d.hostname))
                })
            })
            .map(|d| d.id.clone());
        let hint = if row.device_name.is_empty() {
            row.device_id.clone()
        } else {
            row.device_name.clone()
        };
        match &device {
            Some(d) => {
                report.mapped += 1;
                if !touched.contains(d) {
                    touched.push(d.clone());
                }
            }
            None => report
                .unmapped
                .push((row.line, row.account.clone(), hint.clone())),
        }
        completions.push(crate::store::NewMfaCompletion {
            site: site.id,
            device,
            account,
            completed_at: row.at,
            source: source.to_owned(),
            method: row.method,
            external_id: row.external_id,
            device_hint: hint,
        });
    }
    report.new = store.record_mfa_completions(&completions, now).await?;
    if !touched.is_empty() {
        let filter = crate::store::DeviceFilter {
            devices: Some(touched),
            ..crate::store::DeviceFilter::default()
        };
        crate::rules::evaluate::refresh(store, config, &filter, now).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The collector's clock in these tests: after every export's rows.
    const NOW: Timestamp = Timestamp::constant(1_795_003_200, 0); // 2026-11-18T12:00:00Z

    #[test]
    fn entra_csv_rows_in_several_zones() {
        let csv = "Date (UTC),Request ID,User,Username,Status,Authentication requirement,Device ID,Device\n\
                   2026-11-01T09:15:00Z,r1,Jane Smith,J.Smith@cabot.sch.uk,Success,Multifactor authentication,,LAPTOP-07\n\
                   2026-11-01 10:15:00,r2,Jane Smith,j.smith@cabot.sch.uk,Failure,Multifactor authentication,,LAPTOP-07\n\
                   2026-11-01T10:15:00+01:00,r3,Jane Smith,j.smith@cabot.sch.uk,Success,Single-factor authentication,,LAPTOP-07\n";
        let rows = parse(SigninFormat::EntraCsv, csv.as_bytes(), "s.csv", NOW).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].account, "j.smith@cabot.sch.uk");
        assert!(rows[0].succeeded && rows[0].multi_factor);
        assert!(!rows[1].succeeded);
        assert!(!rows[2].multi_factor);
        // 10:15+01:00 is the same instant as 09:15Z.
        assert_eq!(rows[2].at, rows[0].at);
        assert_eq!(rows[1].at, "2026-11-01T10:15:00Z".parse().unwrap());
    }

    #[test]
    fn entra_json_graph_shape() {
        let json = r#"{"value": [{
            "id": "66ea54eb-6301-4ee5-be62-ff5a759b0100",
            "createdDateTime": "2026-11-02T08:00:00Z",
            "userPrincipalName": "J.Smith@cabot.sch.uk",
            "status": {"errorCode": 0},
            "authenticationRequirement": "multiFactorAuthentication",
            "authenticationDetails": [
                {"authenticationMethod": "Password", "succeeded": true},
                {"authenticationMethod": "Mobile app notification", "succeeded": true}
            ],
            "deviceDetail": {"deviceId": "", "displayName": "LAPTOP-07"}
        }]}"#;
        let rows = parse(SigninFormat::EntraJson, json.as_bytes(), "s.json", NOW).unwrap();
        assert_eq!(rows[0].method, "Mobile app notification");
        assert!(rows[0].succeeded && rows[0].multi_factor);
        assert_eq!(rows[0].device_name, "LAPTOP-07");
    }

    #[test]
    fn google_login_audit() {
        let csv = "Event Name,Event Description,User,Date,IP Address,Login Type,Login Challenge Method\n\
                   Successful login,j.smith logged in,j.smith@cabot.sch.uk,2026-11-03T07:30:00-05:00,10.0.0.1,Google Password,\"Password, Google Authenticator\"\n\
                   Successful login,j.smith logged in,j.smith@cabot.sch.uk,2026-11-04T07:30:00-05:00,10.0.0.1,Google Password,Password\n";
        let rows = parse(SigninFormat::GoogleCsv, csv.as_bytes(), "g.csv", NOW).unwrap();
        assert!(rows[0].multi_factor);
        assert_eq!(rows[0].at, "2026-11-03T12:30:00Z".parse().unwrap());
        assert!(!rows[1].multi_factor);
        assert_ne!(rows[0].external_id, rows[1].external_id);
    }

    #[test]
    fn bad_rows_are_located() {
        let csv = "Date (UTC),Request ID,Username,Status,Authentication requirement\n\
                   yesterday,r1,a@b,Success,Multifactor authentication\n";
        let err = parse(SigninFormat::EntraCsv, csv.as_bytes(), "s.csv", NOW).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(
            err.to_string()
                .contains("column 1 (Date (UTC)): 'yesterday'"),
            "{err}"
        );
        let err = parse(SigninFormat::EntraJson, b"[{\"id\": \"x\"}]", "s.json", NOW).unwrap_err();
        assert!(
            err.to_string().contains("record 1: createdDateTime"),
            "{err}"
        );
    }

    #[test]
    fn sign_ins_ahead_of_the_clock_are_refused_with_their_line() {
        // Five minutes ahead of NOW are allowed.
        let entra = |date: &str| {
            format!(
                "Date (UTC),Request ID,Username,Status,Authentication requirement\n\
                 2026-11-01T09:15:00Z,r1,a@b,Success,Multifactor authentication\n\
                 {date},r2,a@b,Success,Multifactor authentication\n"
            )
        };
        let google = |date: &str| {
            format!(
                "Event Name,User,Date,Login Challenge Method\n\
                 Successful login,a@b,{date},Google Authenticator\n"
            )
        };
        let json = |date: &str| {
            format!(
                r#"[{{"id": "x", "createdDateTime": "{date}", "userPrincipalName": "a@b",
                   "status": {{"errorCode": 0}}, "authenticationRequirement": "multiFactorAuthentication"}}]"#
            )
        };
        let within = "2026-11-18T12:05:00Z";
        let beyond = "2026-11-18T12:05:01Z";
        let years = "2036-01-01T00:00:00Z";
        let cases = [
            (
                "entra csv within the skew",
                SigninFormat::EntraCsv,
                entra(within),
                None,
            ),
            (
                "entra csv a second beyond",
                SigninFormat::EntraCsv,
                entra(beyond),
                Some(
                    "s: line 3, column 1 (Date (UTC)): '2026-11-18T12:05:01Z': 2026-11-18T12:05:01Z is in the future",
                ),
            ),
            (
                "entra csv years ahead",
                SigninFormat::EntraCsv,
                entra(years),
                Some("s: line 3, column 1 (Date (UTC)): '2036-01-01T00:00:00Z': "),
            ),
            (
                "google within the skew",
                SigninFormat::GoogleCsv,
                google(within),
                None,
            ),
            (
                "google beyond",
                SigninFormat::GoogleCsv,
                google(beyond),
                Some("s: line 2, column 3 (Date): '2026-11-18T12:05:01Z': "),
            ),
            (
                "entra json within the skew",
                SigninFormat::EntraJson,
                json(within),
                None,
            ),
            (
                "entra json beyond",
                SigninFormat::EntraJson,
                json(beyond),
                Some("s: record 1: createdDateTime: 2026-11-18T12:05:01Z is in the future"),
            ),
        ];
        for (name, format, text, want_error) in cases {
            let got = parse(format, text.as_bytes(), "s", NOW);
            match (got, want_error) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => assert!(e.to_string().starts_with(want), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, wanted error {want:?}"),
            }
        }
    }
}
