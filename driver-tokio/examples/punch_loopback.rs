//! Three natrix nodes on 127.0.0.1 under tokio: A punches to B through the
//! coordinator R, runs its own session with B on the punched path, and sends
//! B data over it.
//!
//! `cargo run -p natrix-tokio --example tokio_punch_loopback`

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    natrix_driver_core::testkit::punch_loopback_demo(natrix_tokio::Tokio).await
}
