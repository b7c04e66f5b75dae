//! Coordinator selection: which peer should mediate a punch.

use crate::error::TraversalError;
use crate::rng::Rng;
use crate::wire::NodeId;

/// A peer that could coordinate a punch: it has sessions with both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoordinatorCandidate {
    /// The candidate.
    pub id: NodeId,
    /// Whether it also relays traffic (preferred: the punch's fallback path
    /// then runs through the same node).
    pub relay_capable: bool,
    /// Its current load, in any unit the embedder uses consistently (lower is
    /// better).
    pub load: u32,
}

/// Picks a coordinator for a punch between the two `ends`: among relay-capable
/// candidates if there are any, otherwise among all, by "power of two random
/// choices" on load (two candidates drawn with the seeded `rng`, the less
/// loaded wins). Candidates that are one of the ends are ignored. No candidate
/// → [`TraversalError::NoRelay`].
pub fn select_coordinator(
    candidates: &[CoordinatorCandidate],
    ends: [NodeId; 2],
    rng: &mut Rng,
) -> Result<NodeId, TraversalError> {
    let usable = || candidates.iter().filter(|c| !ends.contains(&c.id));
    let relay = usable().filter(|c| c.relay_capable).count();
    let pool = |i: usize| usable().filter(|c| relay == 0 || c.relay_capable).nth(i);
    let n = if relay > 0 { relay } else { usable().count() };
    let first = pool(rng.below(n)).ok_or(TraversalError::NoRelay)?;
    let second = pool(rng.below(n)).ok_or(TraversalError::NoRelay)?;
    Ok(if second.load < first.load {
        second.id
    } else {
        first.id
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const ENDS: [NodeId; 2] = [NodeId(100), NodeId(101)];

    #[test]
    fn the_ends_are_never_chosen() {
        let cands = [c(100, true, 0), c(101, true, 0)];
        assert_eq!(
            select_coordinator(&cands, ENDS, &mut Rng::new(1)),
            Err(TraversalError::NoRelay)
        );
        let cands = [c(100, true, 0), c(7, false, 9)];
        assert_eq!(
            select_coordinator(&cands, ENDS, &mut Rng::new(1)),
            Ok(NodeId(7))
        );
    }

    fn c(id: u64, relay_capable: bool, load: u32) -> CoordinatorCandidate {
        CoordinatorCandidate {
            id: NodeId(id),
            relay_capable,
            load,
        }
    }

    #[test]
    fn no_candidate_is_no_relay() {
        assert_eq!(
            select_coordinator(&[], ENDS, &mut Rng::new(1)),
            Err(TraversalError::NoRelay)
        );
    }

    #[test]
    fn prefers_relay_capable() {
        let cands = [c(1, false, 0), c(2, true, 90), c(3, false, 0)];
        for seed in 0..200 {
            assert_eq!(
                select_coordinator(&cands, ENDS, &mut Rng::new(seed)),
                Ok(NodeId(2))
            );
        }
    }

    #[test]
    fn falls_back_to_any_candidate() {
        let cands = [c(1, false, 5)];
        assert_eq!(
            select_coordinator(&cands, ENDS, &mut Rng::new(9)),
            Ok(NodeId(1))
        );
    }

    #[test]
    fn two_choices_favour_low_load() {
        let cands = [
            c(1, true, 100),
            c(2, true, 1),
            c(3, true, 50),
            c(4, true, 100),
        ];
        let mut rng = Rng::new(3);
        let mut wins = [0u32; 5];
        for _ in 0..4000 {
            let NodeId(id) = select_coordinator(&cands, ENDS, &mut rng).unwrap();
            wins[id as usize] += 1;
        }
        // The least-loaded node wins whenever it is drawn: 1 - (3/4)^2 = 7/16.
        assert!(wins[2] > 1500, "{wins:?}");
        assert!(wins[2] > wins[3] && wins[3] > wins[1].min(wins[4]));
        // Same seed, same choices.
        let a: Vec<_> = (0..50)
            .scan(Rng::new(5), |r, _| {
                Some(select_coordinator(&cands, ENDS, r))
            })
            .collect();
        let b: Vec<_> = (0..50)
            .scan(Rng::new(5), |r, _| {
                Some(select_coordinator(&cands, ENDS, r))
            })
            .collect();
        assert_eq!(a, b);
    }
}
