//! What this binary is: the crate version and the git revision it was built
//! from (set by build.rs; "unknown" when built outside a git checkout).
//! Printed by `foobar --version`, logged at start, exported as the
//! `foobar_build_info` metric.

/// The crate version, e.g. "0.1.0".
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short commit id (with "-dirty" if tracked files differed from it),
/// or "unknown".
pub const REVISION: &str = env!("FOOBAR_GIT_REVISION");

/// `foobar --version`'s text after the program name: "0.1.0 (git abc123)".
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("FOOBAR_GIT_REVISION"),
    ")"
);
