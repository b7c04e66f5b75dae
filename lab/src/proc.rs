//! The `natrix` processes the lab runs inside namespaces: started with
//! `ip netns exec`, stderr to a log file, stdout read line by line (with
//! arrival times), stdin fed a numbered line every 20 ms. Every wait has a
//! timeout; a process that hangs is killed and reported with its log.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::netns::interrupted;
use crate::{LabError, Result};

/// How often a fed process gets a line on stdin.
pub const FEED_INTERVAL: Duration = Duration::from_millis(20);

/// A running `natrix` (or other) process in a namespace.
#[derive(Debug)]
pub struct Proc {
    /// A name for reports.
    pub name: String,
    child: Child,
    /// Its stderr.
    pub log: PathBuf,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    stop_feed: Arc<AtomicBool>,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `program args…` in `ns` (in this namespace if `ns` is
    /// empty). With `feed`, stdin gets
    /// `"{feed} {n}\n"` every [`FEED_INTERVAL`] until [`Proc::stop_feeding`];
    /// without, stdin is empty.
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn spawn(
        ns: &str,
        name: &str,
        dir: &Path,
        program: &Path,
        args: &[String],
        feed: Option<String>,
    ) -> Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let err = std::fs::File::create(&log)
            .map_err(|e| LabError::Setup(format!("cannot create {}: {e}", log.display())))?;
        // An empty `ns` runs the program in this namespace (tests).
        let mut cmd = if ns.is_empty() {
            Command::new(program)
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        };
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(err)
            .stdin(if feed.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().map_err(|e| LabError::Command {
            command: format!("{} {}", program.display(), args.join(" ")),
            detail: format!("cannot start: {e}"),
        })?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lines
                        .lock()
                        .expect("not poisoned")
                        .push((Instant::now(), line));
                }
            });
        }
        let stop_feed = Arc::new(AtomicBool::new(false));
        if let (Some(label), Some(mut stdin)) = (feed, child.stdin.take()) {
            let stop = Arc::clone(&stop_feed);
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if writeln!(stdin, "{label} {n}").is_err() {
                        break;
                    }
                    n += 1;
                    std::thread::sleep(FEED_INTERVAL);
                }
                // Dropping stdin is the end of file.
            });
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            lines,
            stop_feed,
            exited: None,
        })
    }

    /// Its stderr so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its stderr, for error reports.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// Lines received on stdout so far, with their arrival times.
    #[must_use]
    pub fn received(&self) -> Vec<(Instant, String)> {
        self.lines.lock().expect("not poisoned").clone()
    }

    /// How many stdout lines arrived after `t`.
    #[must_use]
    pub fn received_since(&self, t: Instant) -> usize {
        self.lines
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(at, _)| *at > t)
            .count()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.exited = Some(st);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Waits until its stderr contains `needle`.
    ///
    /// # Errors
    /// Timeout, interruption, or the process exited first (with its log).
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let name = self.name.clone();
        self.wait_for(&format!("{name} to log {needle:?}"), timeout, |p| {
            p.log_text().contains(needle)
        })
    }

    /// Polls `done` every 20 ms until it holds.
    ///
    /// # Errors
    /// Timeout, interruption, or the process exited first (with its log).
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&mut Proc) -> bool,
    ) -> Result<()> {
        let until = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(());
            }
            if interrupted() {
                return Err(LabError::Interrupted);
            }
            if !self.running() {
                return Err(self.failure(&format!(
                    "exited ({:?}) while waiting for {what}",
                    self.exited
                )));
            }
            if Instant::now() >= until {
                return Err(self.failure(&format!("no {what} within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops feeding stdin: the process sees the end of file.
    pub fn stop_feeding(&self) {
        self.stop_feed.store(true, Ordering::Relaxed);
    }

    /// Sends SIGTERM (what Ctrl-C would do).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for it to exit; after `timeout` it is killed and reported.
    ///
    /// # Errors
    /// It did not exit in time (killed), or the lab was interrupted.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if !self.running() {
                if let Some(st) = self.exited {
                    return Ok(st);
                }
                return Err(self.failure("cannot read its exit status"));
            }
            if interrupted() {
                self.kill();
                return Err(LabError::Interrupted);
            }
            if Instant::now() >= until {
                self.kill();
                return Err(self.failure(&format!("did not exit within {timeout:?}; killed")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (if it runs).
    pub fn kill(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            if let Ok(st) = self.child.wait() {
                self.exited = Some(st);
            }
        }
    }

    /// A [`LabError::Process`] with its log.
    #[must_use]
    pub fn failure(&self, what: &str) -> LabError {
        LabError::Process {
            name: self.name.clone(),
            what: what.to_owned(),
            log: self.log_tail(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop_feeding();
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("natrix-lab-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".to_owned(), script.to_owned()]
    }

    #[test]
    fn a_hung_process_is_killed_and_reported_with_its_log() {
        let dir = scratch("hung");
        let mut p = Proc::spawn(
            "",
            "sleeper",
            &dir,
            Path::new("/bin/sh"),
            &sh("echo about to hang >&2; sleep 30"),
            None,
        )
        .expect("spawn");
        let err = p
            .wait_exit(Duration::from_millis(300))
            .expect_err("it hangs");
        match err {
            LabError::Process { name, what, log } => {
                assert_eq!(name, "sleeper");
                assert!(what.contains("killed"), "{what}");
                assert!(log.contains("about to hang"), "{log}");
            }
            e => panic!("{e}"),
        }
        assert!(!p.running(), "killed");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_wait_ends_with_the_log_when_the_process_exits_first() {
        let dir = scratch("early");
        let mut p = Proc::spawn(
            "",
            "quitter",
            &dir,
            Path::new("/bin/sh"),
            &sh("echo giving up >&2; exit 3"),
            None,
        )
        .expect("spawn");
        let err = p
            .wait_log("never printed", Duration::from_secs(10))
            .expect_err("it exits");
        let text = err.to_string();
        assert!(text.contains("exited"), "{text}");
        assert!(text.contains("giving up"), "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn fed_lines_come_back_and_the_end_of_stdin_ends_the_process() {
        let dir = scratch("echo");
        let mut p = Proc::spawn(
            "",
            "cat",
            &dir,
            Path::new("/bin/cat"),
            &[],
            Some("x".into()),
        )
        .expect("spawn");
        p.wait_for("three lines", Duration::from_secs(10), |p| {
            p.received().len() >= 3
        })
        .expect("lines");
        let lines: Vec<String> = p.received().into_iter().map(|(_, l)| l).collect();
        assert_eq!(&lines[..3], ["x 0", "x 1", "x 2"]);
        p.stop_feeding();
        let st = p
            .wait_exit(Duration::from_secs(10))
            .expect("cat ends at EOF");
        assert!(st.success());
        let _ = std::fs::remove_dir_all(dir);
    }
}
