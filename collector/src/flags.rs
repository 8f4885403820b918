//! Flags: what the rules raise about a device (or an account on a device),
//! with a lifecycle a technician drives and an audit trail of every step.
//!
//! ```text
//! open ──approve──► disable_approved ──agent confirms──► disabled
//!  │                     │                                  │
//!  │ dismiss / resolved  │ dismiss / reenable               │ reenable
//!  ▼                     ▼                                  ▼
//! dismissed           dismissed / reenabled              reenabled
//! ```
//!
//! A `tamper` flag only goes from open to dismissed, by a person with a
//! reason (`check_reason`): nothing to approve, and no rule resolves it.
//!
//! `next_state` is the whole state machine and `effects` says what a
//! transition does to the device; both are pure. The store only applies
//! them: the new state, the effects (a command to the agent, the device's
//! enforcement state, a new grace period) and the audit row, in one
//! transaction.

use jiff::Timestamp;
use serde::Serialize;

use crate::model::{CommandKind, DeviceId, Enforcement, SiteId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagKind {
    DeviceInactive,
    MfaStale,
    /// Signs that someone interfered with the agent. Only a person closes
    /// it (dismiss, with a reason): nothing to approve, and no rule
    /// resolves it.
    Tamper,
}

impl FlagKind {
    pub const ALL: [FlagKind; 3] = [
        FlagKind::DeviceInactive,
        FlagKind::MfaStale,
        FlagKind::Tamper,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FlagKind::DeviceInactive => "device_inactive",
            FlagKind::MfaStale => "mfa_stale",
            FlagKind::Tamper => "tamper",
        }
    }

    pub fn parse(text: &str) -> Option<FlagKind> {
        match text {
            "device_inactive" => Some(FlagKind::DeviceInactive),
            "mfa_stale" => Some(FlagKind::MfaStale),
            "tamper" => Some(FlagKind::Tamper),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum FlagState {
    Open,
    DisableApproved,
    Disabled,
    Reenabled,
    Dismissed,
}

impl FlagState {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagState::Open => "open",
            FlagState::DisableApproved => "disable_approved",
            FlagState::Disabled => "disabled",
            FlagState::Reenabled => "reenabled",
            FlagState::Dismissed => "dismissed",
        }
    }

    pub fn parse(text: &str) -> Option<FlagState> {
        Some(match text {
            "open" => FlagState::Open,
            "disable_approved" => FlagState::DisableApproved,
            "disabled" => FlagState::Disabled,
            "reenabled" => FlagState::Reenabled,
            "dismissed" => FlagState::Dismissed,
            _ => return None,
        })
    }

    /// Active flags are the ones that still need someone (or the agent).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            FlagState::Open | FlagState::DisableApproved | FlagState::Disabled
        )
    }
}

/// What can happen to a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagAction {
    /// A technician approves disabling the device (or the site disables
    /// automatically).
    Approve,
    /// A person decides no action is needed.
    Dismiss,
    /// A person re-enables a disabled (or about to be disabled) device.
    Reenable,
    /// The agent reports it applied the disable command.
    ConfirmDisabled,
    /// The rules find the device compliant again before anyone acted (late
    /// sessions arrived).
    Resolve,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("no flag with id {0}")]
    NotFound(i64),
    #[error("flag {id} is {state}: it cannot be {action}")]
    NotAllowed {
        id: i64,
        state: &'static str,
        action: &'static str,
    },
    #[error("a reason is required to {0} a flag")]
    ReasonRequired(&'static str),
}

impl FlagAction {
    pub fn verb(self) -> &'static str {
        match self {
            FlagAction::Approve => "approved",
            FlagAction::Dismiss => "dismissed",
            FlagAction::Reenable => "re-enabled",
            FlagAction::ConfirmDisabled => "confirmed disabled",
            FlagAction::Resolve => "resolved",
        }
    }
}

/// The state machine. `kind` matters because only device flags disable
/// devices.
pub fn next_state(
    id: i64,
    kind: FlagKind,
    current: FlagState,
    action: FlagAction,
) -> Result<FlagState, FlagError> {
    use FlagAction as A;
    use FlagState as S;
    let next = match (current, action) {
        (S::Open, A::Approve) if kind == FlagKind::DeviceInactive => S::DisableApproved,
        (S::Open | S::DisableApproved, A::Dismiss) => S::Dismissed,
        (S::Open, A::Resolve) if kind != FlagKind::Tamper => S::Dismissed,
        (S::DisableApproved, A::ConfirmDisabled) => S::Disabled,
        (S::DisableApproved | S::Disabled, A::Reenable) => S::Reenabled,
        _ => {
            return Err(FlagError::NotAllowed {
                id,
                state: current.as_str(),
                action: action.verb(),
            });
        }
    };
    Ok(next)
}

/// A person must say why they dismiss a `tamper` flag: it is the only way
/// one closes, and the reason is what remains of the decision.
pub fn check_reason(kind: FlagKind, action: FlagAction, reason: &str) -> Result<(), FlagError> {
    match (kind, action) {
        (FlagKind::Tamper, FlagAction::Dismiss) if reason.trim().is_empty() => {
            Err(FlagError::ReasonRequired("dismiss"))
        }
        _ => Ok(()),
    }
}

/// What a flag transition does to its device besides changing the flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// A command for the agent, and the enforcement state the device is in
    /// until the agent confirms it.
    pub command: Option<(CommandKind, Enforcement)>,
    /// A new grace period starts at the transition (the device's
    /// `reenabled_at`).
    pub new_grace_period: bool,
}

/// The effects of moving a flag of `kind` from `from` to `to` (a
/// transition `next_state` allowed). Approving a device flag disables the
/// device; re-enabling it, or dismissing it once approved, undoes whatever
/// the agent did or was about to do and starts a new grace period.
pub fn effects(kind: FlagKind, from: FlagState, to: FlagState) -> Effects {
    use FlagState as S;
    match (kind, from, to) {
        (FlagKind::DeviceInactive, _, S::DisableApproved) => Effects {
            command: Some((CommandKind::Disable, Enforcement::DisablePending)),
            new_grace_period: false,
        },
        (FlagKind::DeviceInactive, from, S::Reenabled | S::Dismissed) if from != S::Open => {
            Effects {
                command: Some((CommandKind::Enable, Enforcement::EnablePending)),
                new_grace_period: true,
            }
        }
        _ => Effects::default(),
    }
}

/// What a device's new activity verdict does to its `device_inactive`
/// flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictDecision {
    /// Open a flag, and approve it at once where the site disables
    /// inactive devices automatically.
    Open {
        auto_approve: bool,
    },
    /// Resolve the open flag: the device is compliant again.
    Resolve,
    Nothing,
}

/// Non-compliant with no flag in progress opens one; compliant again (or
/// at risk, or in grace) resolves a flag still `open`. A flag a
/// technician has acted on (approved, disabled) is left to them.
pub fn on_activity_verdict(
    status: crate::rules::activity::ActivityStatus,
    active: Option<FlagState>,
    auto_disable: bool,
) -> VerdictDecision {
    use crate::rules::activity::ActivityStatus as A;
    match (status, active) {
        (A::NonCompliant, None) => VerdictDecision::Open {
            auto_approve: auto_disable,
        },
        (A::Compliant | A::AtRisk | A::Grace, Some(FlagState::Open)) => VerdictDecision::Resolve,
        _ => VerdictDecision::Nothing,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FlagRecord {
    pub id: i64,
    #[serde(skip)]
    pub site_id: SiteId,
    pub site: String,
    pub device_id: DeviceId,
    pub hostname: String,
    pub kind: FlagKind,
    /// The account, for per-account flags (`mfa_stale`); empty otherwise.
    pub account: String,
    pub state: FlagState,
    pub opened_at: Timestamp,
    pub updated_at: Timestamp,
    pub summary: String,
}

/// One step in a flag's life: the audit trail.
#[derive(Clone, Debug, Serialize)]
pub struct FlagTransition {
    pub at: Timestamp,
    pub actor: String,
    pub from: Option<FlagState>,
    pub to: FlagState,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_table() {
        use FlagAction as A;
        use FlagState as S;
        let device = FlagKind::DeviceInactive;
        let cases = [
            (device, S::Open, A::Approve, Some(S::DisableApproved)),
            (device, S::Open, A::Dismiss, Some(S::Dismissed)),
            (device, S::Open, A::Resolve, Some(S::Dismissed)),
            (device, S::Open, A::Reenable, None),
            (device, S::Open, A::ConfirmDisabled, None),
            (
                device,
                S::DisableApproved,
                A::ConfirmDisabled,
                Some(S::Disabled),
            ),
            (device, S::DisableApproved, A::Reenable, Some(S::Reenabled)),
            (device, S::DisableApproved, A::Dismiss, Some(S::Dismissed)),
            (device, S::DisableApproved, A::Resolve, None),
            (device, S::Disabled, A::Reenable, Some(S::Reenabled)),
            (device, S::Disabled, A::Dismiss, None),
            (device, S::Disabled, A::Approve, None),
            (device, S::Reenabled, A::Reenable, None),
            (device, S::Dismissed, A::Approve, None),
            (FlagKind::MfaStale, S::Open, A::Approve, None),
            (FlagKind::MfaStale, S::Open, A::Dismiss, Some(S::Dismissed)),
            (FlagKind::Tamper, S::Open, A::Dismiss, Some(S::Dismissed)),
            (FlagKind::Tamper, S::Open, A::Approve, None),
            (FlagKind::Tamper, S::Open, A::Resolve, None),
            (FlagKind::Tamper, S::Open, A::Reenable, None),
            (FlagKind::Tamper, S::Open, A::ConfirmDisabled, None),
            (FlagKind::Tamper, S::Dismissed, A::Dismiss, None),
        ];
        for (kind, from, action, want) in cases {
            assert_eq!(
                next_state(1, kind, from, action).ok(),
                want,
                "{kind:?} {from:?} {action:?}"
            );
        }
    }

    #[test]
    fn dismissing_a_tamper_flag_needs_a_reason() {
        use FlagAction as A;
        use FlagKind as K;
        let cases = [
            (K::Tamper, A::Dismiss, "", false),
            (K::Tamper, A::Dismiss, "  ", false),
            (
                K::Tamper,
                A::Dismiss,
                "pupil was told; agent reinstalled",
                true,
            ),
            (K::DeviceInactive, A::Dismiss, "", true),
            (K::Tamper, A::Resolve, "", true),
        ];
        for (kind, action, reason, want) in cases {
            assert_eq!(
                check_reason(kind, action, reason).is_ok(),
                want,
                "{kind:?} {action:?} {reason:?}"
            );
        }
    }

    #[test]
    fn activity_verdicts_table() {
        use crate::rules::activity::ActivityStatus as A;
        use FlagState as S;
        use VerdictDecision as D;
        let cases = [
            (
                A::NonCompliant,
                None,
                false,
                D::Open {
                    auto_approve: false,
                },
            ),
            (A::NonCompliant, None, true, D::Open { auto_approve: true }),
            (A::NonCompliant, Some(S::Open), true, D::Nothing),
            (A::NonCompliant, Some(S::Disabled), false, D::Nothing),
            (A::Compliant, Some(S::Open), false, D::Resolve),
            (A::AtRisk, Some(S::Open), false, D::Resolve),
            (A::Grace, Some(S::Open), false, D::Resolve),
            (A::Compliant, Some(S::DisableApproved), false, D::Nothing),
            (A::Compliant, Some(S::Disabled), false, D::Nothing),
            (A::Compliant, None, true, D::Nothing),
            (A::Disabled, Some(S::Open), false, D::Nothing),
        ];
        for (status, active, auto, want) in cases {
            assert_eq!(
                on_activity_verdict(status, active, auto),
                want,
                "{status:?} {active:?} auto={auto}"
            );
        }
    }

    #[test]
    fn effects_table() {
        use FlagState as S;
        let device = FlagKind::DeviceInactive;
        let disable = Effects {
            command: Some((CommandKind::Disable, Enforcement::DisablePending)),
            new_grace_period: false,
        };
        let enable = Effects {
            command: Some((CommandKind::Enable, Enforcement::EnablePending)),
            new_grace_period: true,
        };
        let none = Effects::default();
        let cases = [
            (device, S::Open, S::DisableApproved, disable),
            (device, S::Open, S::Dismissed, none),
            (device, S::DisableApproved, S::Disabled, none),
            (device, S::DisableApproved, S::Dismissed, enable),
            (device, S::DisableApproved, S::Reenabled, enable),
            (device, S::Disabled, S::Reenabled, enable),
            (FlagKind::MfaStale, S::Open, S::Dismissed, none),
        ];
        for (kind, from, to, want) in cases {
            assert_eq!(effects(kind, from, to), want, "{kind:?} {from:?} -> {to:?}");
        }
        // Every allowed transition has effects only for device flags.
        for from in [S::Open, S::DisableApproved, S::Disabled] {
            for action in [
                FlagAction::Approve,
                FlagAction::Dismiss,
                FlagAction::Resolve,
                FlagAction::ConfirmDisabled,
                FlagAction::Reenable,
            ] {
                if let Ok(to) = next_state(1, FlagKind::MfaStale, from, action) {
                    assert_eq!(effects(FlagKind::MfaStale, from, to), none);
                }
            }
        }
    }
}
