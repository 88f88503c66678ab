//! The test hooks' switches on `dtx node`: an environment variable a black-box test sets
//! on a node process to crash it mid group commit (`DTX_CRASH_AT_GROUP_COMMIT`). It is
//! built in only with the `test-hooks` feature (dtx-tests enables it); a production binary
//! warns once if it is set, and ignores it. (Network faults are no test hook: see
//! `dtx node --fault-injection` and `docs/faults.md`.)

use dtx_node::daemon::DaemonOptions;

/// Sets the hooks of `options` from the environment.
#[cfg(feature = "test-hooks")]
pub(crate) fn apply(options: &mut DaemonOptions) -> anyhow::Result<()> {
    use anyhow::Context;
    use dtx_node::daemon::CRASH_AT_GROUP_COMMIT_ENV;
    options.crash_at_group_commit = match std::env::var(CRASH_AT_GROUP_COMMIT_ENV) {
        Ok(text) => Some(
            text.parse()
                .with_context(|| format!("{CRASH_AT_GROUP_COMMIT_ENV}={text:?} is not a number"))?,
        ),
        Err(_) => None,
    };
    Ok(())
}

/// This build has no hooks: warns if the hook variable is set (a test run against a
/// production binary would otherwise pass for the wrong reason).
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn apply(_options: &mut DaemonOptions) -> anyhow::Result<()> {
    // Whole sentences, so that the variables' names appear in the binary only here.
    const WARNINGS: [(&str, &str); 1] = [
        ("DTX_CRASH_AT_GROUP_COMMIT", "DTX_CRASH_AT_GROUP_COMMIT is set, but this dtx is built without the test-hooks feature: no crash"),
    ];
    for (variable, warning) in WARNINGS {
        if std::env::var_os(variable).is_some() {
            tracing::warn!("{warning}");
        }
    }
    Ok(())
}
