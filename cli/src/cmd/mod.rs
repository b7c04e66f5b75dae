//! One module per command.

pub(crate) mod coordinator;
pub(crate) mod demo;
pub(crate) mod keygen;
pub(crate) mod map;
pub(crate) mod netcat;
pub(crate) mod netcheck;
pub(crate) mod sim;
