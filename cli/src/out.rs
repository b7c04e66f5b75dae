//! stdout for the program's product. A closed pipe (`natrix sim | head`)
//! ends the program quietly with success, as Unix tools do, instead of a
//! panic.

use std::io::{ErrorKind, Write};

/// Writes `args` to stdout; exits 0 if the reader has gone away.
pub(crate) fn emit(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `print!` to stdout through [`emit`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::emit(format_args!($($arg)*)) };
}

/// `println!` to stdout through [`emit`].
macro_rules! outln {
    () => { $crate::out::emit(format_args!("\n")) };
    ($($arg:tt)*) => {{ $crate::out::emit(format_args!($($arg)*)); $crate::out::emit(format_args!("\n")); }};
}
