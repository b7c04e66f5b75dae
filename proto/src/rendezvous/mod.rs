//! The rendezvous roles, composed by the [`Agent`](crate::Agent).
//!
//! | file | role | requirements |
//! |---|---|---|
//! | [`coordinator`] | R: mediates requests, forwards acks and refusals | R1, R5 (coordinator budget, relayed refusals), R7, R9, R11 (same coordinator), R13, C9 |
//! | [`endpoint`] | A and B: request, introduce, train, confirm, ack | R2, R3, R4, R5 (responder budgets, refusals), R6, R7, R8, R10, R11, R12, R13, C9 |
//! | [`select`] | choosing a coordinator | R5 ("no relay") |
//! | `punches` | the endpoint's pending punches: timers, responder counts | R5 (concurrency counts), R3 (deadlines) |

pub mod coordinator;
pub mod endpoint;
mod punches;
pub mod select;

pub use coordinator::{Coordinator, adaptive_fire_lead, reflex_matches_session};
pub use endpoint::{Endpoint, keepalive_token};
pub use select::{CoordinatorCandidate, select_coordinator};
