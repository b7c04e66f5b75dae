//! The one error type for traversal outcomes.

use core::time::Duration;

use crate::behaviour::NatProfile;
use crate::classify::NatClass;
use crate::wire::{NodeId, RejectReason};

/// Formats a [`TraversalError::Skipped`]'s profiles: nothing, or
/// `" (profiles EIM/APDF x APDM/APDF)"`.
struct ProfilePair(Option<(NatProfile, NatProfile)>);

impl core::fmt::Display for ProfilePair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some((local, remote)) => write!(f, " (profiles {local} x {remote})"),
            None => Ok(()),
        }
    }
}

/// Where a punch was when its deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PunchStage {
    /// Waiting for the coordinator's `PunchIntroduce`.
    Introduce,
    /// The keep-alive train ran, but no valid keep-alive arrived from the peer.
    Keepalive,
}

impl core::fmt::Display for PunchStage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PunchStage::Introduce => "waiting for the introduce",
            PunchStage::Keepalive => "waiting for the peer's keep-alive",
        })
    }
}

/// Why a punch did not produce a direct path. Every variant means "use the
/// relay": NAT traversal is an optimisation, never a connectivity failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraversalError {
    /// The punch was refused, with a typed reason: by the coordinator (R1,
    /// R5, R13), by the responder and relayed by the coordinator on natrix's
    /// own channel (R5: [`RejectReason::ResponderBusy`], or the responder's
    /// R4/R13 checks), or because the coordinator's introduce failed this
    /// node's own checks (R12: [`RejectReason::ReflexMismatch`], R13:
    /// [`RejectReason::BogusReflex`]).
    #[error("punch rejected: {0}")]
    Rejected(RejectReason),
    /// No coordinator candidate is connected to both ends (R5).
    #[error("no coordinator is connected to both ends")]
    NoRelay,
    /// The punch deadline passed.
    #[error("punch deadline of {deadline:?} passed while {stage}")]
    DeadlinePassed {
        /// What the punch was waiting for.
        stage: PunchStage,
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The pair decision says no punch between these two can work: the
    /// class matrix, or — when both announced one — their NAT profiles
    /// (C8), which then decided and are named in the message.
    #[error("pair matrix skips {local} x {remote}{}", ProfilePair(*.profiles))]
    Skipped {
        /// The local class.
        local: NatClass,
        /// The remote peer's announced class.
        remote: NatClass,
        /// Both NAT profiles (local, remote), when the decision read them.
        profiles: Option<(NatProfile, NatProfile)>,
    },
    /// A newer `request_punch` to the same peer replaced this one.
    #[error("superseded by a newer request to the same peer")]
    Superseded,
    /// The application cancelled the punch.
    #[error("cancelled")]
    Cancelled,
    /// The agent has no session with the coordinator it was asked to use.
    #[error("no session with coordinator {0}")]
    NoSessionWithCoordinator(NodeId),
    /// The target is this node, or the coordinator is the target.
    #[error("invalid punch target {0}")]
    InvalidTarget(NodeId),
    /// No public address is known for this node (no classification, no
    /// override, and a wildcard bind address).
    #[error("no local reflex address is known")]
    NoLocalReflex,
    /// Too many punches are pending at once.
    #[error("too many pending punches")]
    TooManyPunches,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::behaviour::{FilteringBehaviour as F, MappingBehaviour as M};
    use alloc::string::ToString;

    #[test]
    fn a_skip_names_the_profiles_that_decided_it() {
        let classes = TraversalError::Skipped {
            local: NatClass::Symmetric,
            remote: NatClass::Symmetric,
            profiles: None,
        };
        assert_eq!(
            classes.to_string(),
            "pair matrix skips nat:symmetric x nat:symmetric"
        );
        let profiles = TraversalError::Skipped {
            local: NatClass::Cone,
            remote: NatClass::Symmetric,
            profiles: Some((
                NatProfile::new(M::EndpointIndependent, F::AddressAndPortDependent),
                NatProfile::new(M::AddressAndPortDependent, F::AddressAndPortDependent),
            )),
        };
        assert_eq!(
            profiles.to_string(),
            "pair matrix skips nat:cone x nat:symmetric (profiles EIM/APDF x APDM/APDF)"
        );
    }
}
