//! What can go wrong, what the user should do about it, and the exit code
//! each failure ends the program with (documented in `docs/cli.md`).

use std::fmt;
use std::process::ExitCode;

/// The program's exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Everything worked.
    Ok = 0,
    /// A failure not covered below (I/O, the node stopped).
    Failure = 1,
    /// Bad arguments: an unknown flag, a bad dial string or public key
    /// (clap uses 2 for its own argument errors too).
    Usage = 2,
    /// The key file is missing, unreadable, malformed or too open.
    KeyFile = 3,
    /// No coordinator answered (or its key did not match).
    NoCoordinator = 4,
    /// The peer is not online at any coordinator, or the connection to it
    /// ended.
    PeerUnreachable = 5,
    /// The peer was reached, but only through the relay (`--require-direct`).
    Relayed = 6,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// A failure with its exit code and a hint of what to do.
#[derive(Debug)]
pub(crate) struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// What went wrong.
    pub message: String,
    /// What to do about it, if there is something to say.
    pub hint: Option<String>,
}

impl CliError {
    /// A failure with `exit` and `message`.
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds what the user should do.
    #[must_use]
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// A bad argument.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError::new(Exit::Usage, message)
    }

    /// Anything else.
    pub(crate) fn failure(message: impl Into<String>) -> Self {
        CliError::new(Exit::Failure, message)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::failure(e.to_string())
    }
}

/// The result of a command.
pub(crate) type CliResult<T = ()> = Result<T, CliError>;
