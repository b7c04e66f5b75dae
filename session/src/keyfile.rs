//! The node's secret key on disk.
//!
//! This is the one module of the crate that does I/O: it is a helper for
//! drivers, not part of the sans-IO machine.
//!
//! Format: one line of text, `natrix-secret-key-v1 <64 lower-case hex digits>`
//! followed by a newline. Files are created with mode `0600` and never
//! overwritten ([`create`] uses `create_new`); on Unix, [`load`] refuses a file
//! that group or others may read or write, because whoever can read it can
//! impersonate the node.
//!
//! Every error names the file and says what to do about it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, Zeroizing};

use crate::identity::{KEY_LEN, Keypair};

/// The first word of a key file.
pub const KEY_FILE_HEADER: &str = "natrix-secret-key-v1";

/// A key file is never larger than this; anything bigger is malformed.
const MAX_FILE_LEN: u64 = 256;

/// What went wrong with a key file. Each variant's message names the file and
/// says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file does not exist.
    #[error(
        "key file {} does not exist: check the path, or let natrix create a new identity there",
        path.display()
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error(
        "cannot read key file {}: {source}; check that it is a regular file readable by this user",
        path.display()
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The contents are not a natrix secret key.
    #[error(
        "key file {} is malformed: {reason}; expected one line \"{KEY_FILE_HEADER} <64 hex digits>\" — restore it from a backup, or move it away to create a new identity (a new public key)",
        path.display()
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong (never contains secret material).
        reason: String,
    },
    /// Group or others may access the file (Unix mode bits `0o077`).
    #[error(
        "key file {} is accessible by group or others (mode {mode:03o}); anyone who can read it can impersonate this node: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits (`st_mode & 0o7777`).
        mode: u32,
    },
    /// The file could not be created or written.
    #[error(
        "cannot write key file {}: {source}; check that the directory exists and is writable and that no file is already there",
        path.display()
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Loads the key pair from `path`, or, when the file does not exist, creates it
/// with the secret `fresh_secret` returns (called only in that case; drivers
/// pass 32 bytes of OS randomness).
///
/// If another process creates the file between the two steps, its key is
/// loaded instead.
pub fn load_or_create(
    path: &Path,
    fresh_secret: impl FnOnce() -> [u8; KEY_LEN],
) -> Result<Keypair, KeyFileError> {
    match load(path) {
        Err(KeyFileError::Missing { .. }) => {}
        other => return other,
    }
    let mut secret = fresh_secret();
    let created = create(path, secret);
    secret.zeroize();
    match created {
        Err(KeyFileError::Write { source, .. })
            if source.kind() == io::ErrorKind::AlreadyExists =>
        {
            load(path)
        }
        other => other,
    }
}

/// Loads the key pair from the key file at `path`.
///
/// On Unix, refuses a file with any group/other permission bit set
/// ([`KeyFileError::Permissions`]).
pub fn load(path: &Path) -> Result<Keypair, KeyFileError> {
    let unreadable = |source| KeyFileError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(KeyFileError::Missing {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(unreadable(e)),
    };
    // Metadata of the opened file, not of the path: no race with a swap.
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(unreadable(io::Error::other("not a regular file")));
    }
    check_mode(path, &meta)?;

    let mut contents = Zeroizing::new(Vec::with_capacity(MAX_FILE_LEN as usize + 1));
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut contents)
        .map_err(unreadable)?;
    let secret = parse(&contents).map_err(|reason| KeyFileError::Malformed {
        path: path.to_owned(),
        reason,
    })?;
    Ok(Keypair::from_secret(*secret))
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

/// Parses the file contents; the error is a reason without secret material.
fn parse(contents: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    if contents.is_empty() {
        return Err("the file is empty".to_owned());
    }
    if contents.len() as u64 > MAX_FILE_LEN {
        return Err(format!("the file is longer than {MAX_FILE_LEN} bytes"));
    }
    let text = core::str::from_utf8(contents).map_err(|_| "the file is not text".to_owned())?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.contains('\n') {
        return Err("more than one line".to_owned());
    }
    let Some((header, hex)) = line.split_once(' ') else {
        return Err(format!("no \"{KEY_FILE_HEADER} \" header"));
    };
    if header != KEY_FILE_HEADER {
        return Err(format!(
            "wrong header {:?}, expected \"{KEY_FILE_HEADER}\"",
            header.chars().take(40).collect::<String>()
        ));
    }
    if let Some(pos) = hex.chars().position(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "character {} of the secret is not a hex digit",
            pos + 1
        ));
    }
    // All ASCII now: bytes are characters.
    if hex.len() != 2 * KEY_LEN {
        return Err(format!(
            "the secret has {} hex digits, expected {}",
            hex.len(),
            2 * KEY_LEN
        ));
    }
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    for (byte, pair) in secret.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let hi = pair.first().map_or(0, |&c| hex_value(c));
        let lo = pair.get(1).map_or(0, |&c| hex_value(c));
        *byte = (hi << 4) | lo;
    }
    Ok(secret)
}

/// The value of an ASCII hex digit (callers checked that it is one).
fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// The file contents for `secret`.
fn render(secret: &[u8; KEY_LEN]) -> Zeroizing<String> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Zeroizing::new(String::with_capacity(
        KEY_FILE_HEADER.len() + 2 + 2 * KEY_LEN,
    ));
    out.push_str(KEY_FILE_HEADER);
    out.push(' ');
    for &b in secret {
        for nibble in [b >> 4, b & 0x0f] {
            let c = HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
            out.push(char::from(c));
        }
    }
    out.push('\n');
    out
}

/// Creates a new key file at `path` (mode `0600`, never overwriting an existing
/// file) holding `secret`, and returns its key pair.
///
/// If writing fails after the file was created, the partial file is removed.
pub fn create(path: &Path, secret: [u8; KEY_LEN]) -> Result<Keypair, KeyFileError> {
    let keypair = Keypair::from_secret(secret);
    let write_err = |source| KeyFileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(write_err)?;
    let contents = render(keypair.secret_bytes());
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        // Best effort: a half-written key file would only fail to load later.
        let _ = std::fs::remove_file(path);
        return Err(write_err(e));
    }
    Ok(keypair)
}
