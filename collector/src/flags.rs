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
//! `next_state` is the whole state machine; the store applies a transition,
//! its side effects (commands to the agent, the device's enforcement state)
//! and its audit row in one transaction.

use jiff::Timestamp;
use serde::Serialize;

use crate::model::{DeviceId, SiteId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagKind {
    DeviceInactive,
    MfaStale,
}

impl FlagKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagKind::DeviceInactive => "device_inactive",
            FlagKind::MfaStale => "mfa_stale",
        }
    }

    pub fn parse(text: &str) -> Option<FlagKind> {
        match text {
            "device_inactive" => Some(FlagKind::DeviceInactive),
            "mfa_stale" => Some(FlagKind::MfaStale),
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
        (S::Open, A::Resolve) => S::Dismissed,
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
        ];
        for (kind, from, action, want) in cases {
            assert_eq!(
                next_state(1, kind, from, action).ok(),
                want,
                "{kind:?} {from:?} {action:?}"
            );
        }
    }
}
