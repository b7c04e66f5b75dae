//! `natrix keygen`: a new identity in a key file.

use std::path::PathBuf;

use natrix_session::keyfile;
use natrix_tokio::os_seed;

use crate::common::{create_parent_dir, default_key_path};
use crate::error::{CliError, CliResult, Exit};

/// `natrix keygen` options.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  natrix keygen --out ~/.config/natrix/key\n  \
natrix1q…   (the public key, on stdout: give it to peers)"
)]
pub(crate) struct Args {
    /// Where to write the key file (mode 0600; never overwritten).
    /// Default: $NATRIX_KEY, else ~/.config/natrix/key.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// Writes a new key file and prints the public key on stdout.
///
/// # Errors
/// [`Exit::KeyFile`] when the file exists or cannot be written.
pub(crate) fn run(args: &Args, quiet: bool) -> CliResult<Exit> {
    let path = args.out.clone().unwrap_or_else(default_key_path);
    create_parent_dir(&path)?;
    let kp = keyfile::create(&path, os_seed()).map_err(|e| {
        CliError::new(Exit::KeyFile, e.to_string())
            .hint("a key file is never overwritten: pick another --out, or delete the old one if you really mean to change identity")
    })?;
    if !quiet {
        eprintln!(
            "wrote {} (keep it secret; the public key below is what peers use)",
            path.display()
        );
    }
    outln!("{}", kp.public());
    Ok(Exit::Ok)
}
