//! The agent's bounded tables: constant work per operation, no allocation
//! once sized.
//!
//! * [`WindowTable`] — time-windowed entries (budgets, recent mediations,
//!   rendezvous memory), the memory bound behind R5 and R7;
//! * `Slots` (crate-internal) — the keyed slab under every table, with an
//!   eviction order;
//! * [`Timers`] — an indexed min-heap of deadlines, so that `poll_timeout` is
//!   `O(1)` and a timer update `O(log n)` however many punches (or sessions,
//!   in `natrix-session`) are pending.

pub(crate) mod slots;
mod timers;
mod window;

pub use timers::Timers;
pub use window::WindowTable;
