//! The compliance report, `hallmonitor.compliance.v1`: the JSON document
//! `hallmonitor-collector compliance check` prints, the collector sends
//! each agent as its device state, and `hallmonitor-agent check` prints
//! again. Scripts rely on it, so fields are only ever added.
//!
//! These are the types a reader parses the document into. A status is an
//! enum of the values known when this was built, and `Other` keeps a value
//! added later as it was sent (it serialises back unchanged), so an older
//! reader neither fails nor rewrites a newer document.
//!
//! Architecture invariant: serde and jiff only, no I/O. The collector
//! writes the document from its own types; a test in
//! `collector/src/compliance.rs` parses a full report with these types and
//! serialises it back unchanged, so the two cannot drift apart.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "hallmonitor.compliance.v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ComplianceReport {
    pub schema: String,
    pub as_of: Timestamp,
    /// True when every device listed passes.
    pub compliant: bool,
    pub devices: Vec<DeviceCompliance>,
}

impl ComplianceReport {
    /// Every (staff account, device) two-step sign-in pair in the report.
    pub fn mfa_pairs(&self) -> impl Iterator<Item = &MfaReport> {
        self.devices.iter().flat_map(|device| &device.mfa)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceCompliance {
    pub device_id: String,
    pub hostname: String,
    pub site: String,
    pub compliant: bool,
    pub enforcement: Enforcement,
    pub activity: ActivityReport,
    /// Two-step sign-in freshness of each staff account using the device
    /// (absent from reports written before it existed).
    #[serde(default)]
    pub mfa: Vec<MfaReport>,
    /// Active flags (open, disable approved, disabled).
    pub flags: Vec<FlagSummary>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MfaReport {
    /// The staff account, lowercase.
    pub account: String,
    /// Only `stale` fails the check.
    pub status: MfaStatus,
    pub last_mfa: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActivityReport {
    pub status: ActivityStatus,
    pub used_minutes: i64,
    pub required_minutes: i64,
    pub window_days: i64,
    pub window_start: Timestamp,
    /// Without further use, non-compliant from just after this instant.
    pub breach_at: Option<Timestamp>,
    /// `breach_at` in the site's zone, for people.
    pub breach_local: Option<String>,
    pub grace_until: Option<Timestamp>,
    /// When this verdict was computed.
    pub evaluated_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlagSummary {
    pub id: i64,
    pub kind: FlagKind,
    pub state: FlagState,
    pub opened_at: Timestamp,
}

/// Declares a status enum with its wire strings, an `Other` variant that
/// keeps a value added later, and `as_str`.
macro_rules! status {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)+
            /// A value added after this was built, kept as sent.
            #[serde(untagged)]
            Other(String),
        }

        impl $name {
            /// Every value known to this build.
            pub const KNOWN: &[$name] = &[$($name::$variant,)+];

            /// The value as the document spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(text) => text,
                }
            }
        }

        // A string, not a closed enum: a reader must accept values added
        // later (the `Other` variant).
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let known: Vec<&str> = Self::KNOWN.iter().map(|v| v.as_str()).collect();
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some(format!(
                        "One of: {}; later versions may add values.",
                        known.join(", ")
                    )))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status! {
    /// The device-activity rule's verdict.
    ActivityStatus {
        /// Enrolled or re-enabled recently: not judged yet. Passes.
        Grace = "grace",
        Compliant = "compliant",
        /// Passes now, fails soon without use.
        AtRisk = "at_risk",
        NonCompliant = "non_compliant",
        Disabled = "disabled",
    }
}

status! {
    /// How recent a staff account's last two-step sign-in is.
    MfaStatus {
        Fresh = "fresh",
        DueSoon = "due_soon",
        /// The only status that fails the check.
        Stale = "stale",
    }
}

status! {
    /// Whether pupils may log in on the device, as the collector sees it.
    Enforcement {
        Enabled = "enabled",
        /// A disable command waits for the agent's confirmation.
        DisablePending = "disable_pending",
        Disabled = "disabled",
        /// An enable command waits for the agent's confirmation.
        EnablePending = "enable_pending",
    }
}

status! {
    /// What a flag is about.
    FlagKind {
        DeviceInactive = "device_inactive",
        MfaStale = "mfa_stale",
        /// Signs that someone interfered with the agent (killed, clock
        /// moved, session helper gone, silent while its users sign in
        /// elsewhere).
        Tamper = "tamper",
    }
}

status! {
    /// Where a flag is in its lifecycle (the report lists active ones).
    FlagState {
        Open = "open",
        DisableApproved = "disable_approved",
        Disabled = "disabled",
        Reenabled = "reenabled",
        Dismissed = "dismissed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
  "schema": "hallmonitor.compliance.v1",
  "as_of": "2026-03-02T10:00:00.5Z",
  "compliant": false,
  "devices": [
    {
      "device_id": "d-1",
      "hostname": "lab-07",
      "site": "Cabot",
      "compliant": false,
      "enforcement": "disable_pending",
      "activity": {
        "status": "at_risk",
        "used_minutes": 70,
        "required_minutes": 60,
        "window_days": 28,
        "window_start": "2026-02-02T10:00:00Z",
        "breach_at": "2026-03-05T09:00:00Z",
        "breach_local": "Thu 5 Mar 2026 09:00 GMT",
        "grace_until": null,
        "evaluated_at": "2026-03-02T10:00:00.5Z"
      },
      "mfa": [
        {
          "account": "j.smith",
          "status": "stale",
          "last_mfa": "2026-01-01T08:00:00Z",
          "expires_at": "2026-01-31T08:00:00Z"
        },
        {
          "account": "head",
          "status": "exempt",
          "last_mfa": null,
          "expires_at": null
        }
      ],
      "flags": [
        {
          "id": 7,
          "kind": "mfa_stale",
          "state": "open",
          "opened_at": "2026-02-01T08:00:00Z"
        }
      ]
    }
  ]
}"#;

    #[test]
    fn a_report_parses_into_enums_and_serialises_back_unchanged() {
        let report: ComplianceReport = serde_json::from_str(REPORT).unwrap();
        let device = &report.devices[0];
        assert_eq!(device.enforcement, Enforcement::DisablePending);
        assert_eq!(device.activity.status, ActivityStatus::AtRisk);
        assert_eq!(device.flags[0].kind, FlagKind::MfaStale);
        assert_eq!(device.flags[0].state, FlagState::Open);
        let statuses: Vec<&MfaStatus> = report.mfa_pairs().map(|p| &p.status).collect();
        assert_eq!(
            statuses,
            [&MfaStatus::Stale, &MfaStatus::Other("exempt".into())],
            "a status added later is kept, not an error"
        );
        assert_eq!(serde_json::to_string_pretty(&report).unwrap(), REPORT);
    }

    #[test]
    fn a_report_from_before_two_step_sign_ins_has_no_pairs() {
        let mut old: serde_json::Value = serde_json::from_str(REPORT).unwrap();
        old["devices"][0].as_object_mut().unwrap().remove("mfa");
        let report: ComplianceReport = serde_json::from_value(old).unwrap();
        assert_eq!(report.mfa_pairs().count(), 0);
    }

    #[test]
    fn every_known_value_round_trips_as_its_wire_string() {
        fn check<T>(known: &[T])
        where
            T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug + Clone,
            T: std::fmt::Display,
        {
            for value in known {
                let json = serde_json::to_string(value).unwrap();
                assert_eq!(json, format!("\"{value}\""));
                assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), value);
            }
        }
        check(ActivityStatus::KNOWN);
        check(MfaStatus::KNOWN);
        check(Enforcement::KNOWN);
        check(FlagKind::KNOWN);
        check(FlagState::KNOWN);
        assert_eq!(
            serde_json::from_str::<ActivityStatus>("\"non_compliant\"").unwrap(),
            ActivityStatus::NonCompliant
        );
    }
}
