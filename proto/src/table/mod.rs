//! The agent's bounded tables: constant work per operation, no allocation
//! once sized.
//!
//! * [`WindowTable`] — time-windowed entries (budgets, recent mediations,
//!   rendezvous memory), the memory bound behind R5 and R7;
//! * `Slots` (crate-internal) — the keyed slab under every table, with an
//!   eviction order;
//! * `Timers` (crate-internal) — an indexed min-heap of deadlines, so that
//!   `poll_timeout` is `O(1)` and a timer update `O(log n)` however many
//!   punches are pending.

pub(crate) mod slots;
pub(crate) mod timers;
mod window;

pub use window::WindowTable;
