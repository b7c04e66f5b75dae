//! `natrix demo` runs the built binary end to end: a coordinator and three
//! pairs of peers behind imitated NATs on 127.0.0.1, then the simulator's
//! matrix; it exits 0 and prints the summary table.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn demo_exits_0_and_prints_the_summary_and_the_matrix() {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_natrix"))
        .arg("demo")
        .output()
        .expect("run natrix demo");
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "natrix demo exited {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status.code()
    );
    // The table: a header, and each pair on the path it must end on.
    assert!(stdout.contains("first datagram"), "{stdout}");
    for (pair, path) in [
        ("cone x cone", "direct"),
        ("open x cone", "direct"),
        ("blocked x cone", "relayed"),
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(pair))
            .unwrap_or_else(|| panic!("no row for {pair}:\n{stdout}"));
        let cols: Vec<&str> = row[pair.len()..].split_whitespace().collect();
        assert_eq!(cols.first(), Some(&path), "{row}");
        assert_eq!(cols.last(), Some(&"ok"), "{row}");
        if path == "relayed" {
            assert!(cols.contains(&"relayed"), "{row}");
        }
    }
    // The simulator's matrix follows.
    assert!(stdout.contains("simulator NAT matrix"), "{stdout}");
    assert!(stdout.contains("A \\ B"), "{stdout}");
    assert!(stdout.contains("port-restricted"), "{stdout}");
    // The live lines (stderr) show the relay-then-direct change.
    assert!(stderr.contains("(opened)"), "{stderr}");
    assert!(stderr.contains("(upgraded)"), "{stderr}");
    assert!(
        stderr.contains("upgrade failed, staying on the relay"),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}

#[test]
fn quiet_demo_still_prints_the_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_natrix"))
        .args(["--quiet", "demo"])
        .output()
        .expect("run natrix --quiet demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("blocked x cone"), "{stdout}");
    assert!(stdout.contains("simulator NAT matrix"), "{stdout}");
    assert!(
        stderr.trim().is_empty(),
        "--quiet printed on stderr:\n{stderr}"
    );
}
