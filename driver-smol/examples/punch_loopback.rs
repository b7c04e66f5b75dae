//! Three natrix nodes on 127.0.0.1 under smol: A punches to B through the
//! coordinator R, runs its own session with B on the punched path, and sends
//! B data over it.
//!
//! `cargo run -p natrix-smol --example smol_punch_loopback`

fn main() -> Result<(), String> {
    smol::block_on(natrix_driver_core::testkit::punch_loopback_demo(
        natrix_smol::Smol,
    ))
}
