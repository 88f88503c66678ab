//! The test hooks' switches on `dtx node`: environment variables a black-box test sets on
//! a node process to partition it (`DTX_FAULT_FILE`) or crash it mid group commit
//! (`DTX_CRASH_AT_GROUP_COMMIT`). They are built in only with the `test-hooks` feature
//! (dtx-tests enables it); a production binary warns once if one is set, and ignores it.

use dtx_node::daemon::DaemonOptions;

/// Sets the hooks of `options` from the environment.
#[cfg(feature = "test-hooks")]
pub(crate) fn apply(options: &mut DaemonOptions) -> anyhow::Result<()> {
    use anyhow::Context;
    use dtx_node::daemon::{CRASH_AT_GROUP_COMMIT_ENV, FAULT_FILE_ENV};
    options.crash_at_group_commit = match std::env::var(CRASH_AT_GROUP_COMMIT_ENV) {
        Ok(text) => Some(
            text.parse()
                .with_context(|| format!("{CRASH_AT_GROUP_COMMIT_ENV}={text:?} is not a number"))?,
        ),
        Err(_) => None,
    };
    options.fault_file = std::env::var_os(FAULT_FILE_ENV).map(std::path::PathBuf::from);
    Ok(())
}

/// This build has no hooks: warns about each hook variable that is set (a test run
/// against a production binary would otherwise pass for the wrong reason).
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn apply(_options: &mut DaemonOptions) -> anyhow::Result<()> {
    // Whole sentences, so that the variables' names appear in the binary only here.
    const WARNINGS: [(&str, &str); 2] = [
        ("DTX_FAULT_FILE", "DTX_FAULT_FILE is set, but this dtx is built without the test-hooks feature: no fault injection"),
        ("DTX_CRASH_AT_GROUP_COMMIT", "DTX_CRASH_AT_GROUP_COMMIT is set, but this dtx is built without the test-hooks feature: no crash"),
    ];
    for (variable, warning) in WARNINGS {
        if std::env::var_os(variable).is_some() {
            tracing::warn!("{warning}");
        }
    }
    Ok(())
}
