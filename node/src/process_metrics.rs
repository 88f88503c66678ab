//! The standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, ...), read by hand from `/proc/self` on Linux and
//! omitted elsewhere.
//!
//! CPU per committed transaction is the figure every performance A/B of dtx compares
//! (`dtx bench --json` reports `cpu_us_per_txn` from these counters), so each node exports
//! its CPU time the way every Prometheus client library does, without a new crate.
//!
//! Clock ticks: `/proc/<pid>/stat` gives CPU times in `USER_HZ` ticks, which the kernel
//! fixes at 100 on every architecture dtx runs on (x86, x86-64, arm, arm64, riscv; the
//! kernel converts its internal `HZ` to `USER_HZ` for exactly this interface). Asking
//! `sysconf(_SC_CLK_TCK)` would need libc and `unsafe`, which the workspace forbids, so the
//! constant [`USER_HZ`] is used.

use crate::control::Exposition;
use std::path::Path;

/// Clock ticks per second of the CPU times and start time in `/proc/<pid>/stat`: the
/// kernel's `USER_HZ`, 100 on every supported Linux platform (see the module docs).
pub const USER_HZ: u64 = 100;

/// Longest `/proc` file read (the ones read here are a few hundred bytes to a few KiB).
pub const PROC_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Most entries of `/proc/self/fd` counted: beyond it the count stays at this bound.
pub const OPEN_FDS_COUNTED_MAX: u64 = 1 << 20;

/// The fields of a `/proc/<pid>/stat` line the process metrics use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessStat {
    /// CPU time in user mode (`utime`, clock ticks).
    pub user_ticks: u64,
    /// CPU time in kernel mode (`stime`, clock ticks).
    pub system_ticks: u64,
    /// Threads of the process (`num_threads`).
    pub threads: u64,
    /// When the process started, in clock ticks after boot (`starttime`).
    pub start_ticks_after_boot: u64,
    /// Virtual memory size in bytes (`vsize`).
    pub virtual_memory_bytes: u64,
}

impl ProcessStat {
    /// User plus kernel CPU time, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.user_ticks.saturating_add(self.system_ticks) as f64 / USER_HZ as f64
    }
}

/// Why the process metrics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcessMetricsError {
    /// Not Linux: there is no `/proc` to read them from.
    #[error("process metrics are only read on Linux")]
    Unsupported,
    /// A `/proc` file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// A stat line has no `)` closing the command name.
    #[error("the stat line has no ')' closing the command name")]
    NoCommandEnd,
    /// A field is missing from a `/proc` file.
    #[error("the field {field} is missing")]
    MissingField {
        /// The field's name as proc(5) gives it.
        field: &'static str,
    },
    /// A field is not a whole number.
    #[error("the field {field} is {value:?}, not a whole number")]
    NotANumber {
        /// The field's name as proc(5) gives it.
        field: &'static str,
        /// What it holds.
        value: String,
    },
}

/// Parses one `/proc/<pid>/stat` line.
///
/// The command name (field 2) is in parentheses and may itself hold spaces and
/// parentheses, so the fields are counted from the last `)` of the line, as proc(5)
/// advises.
pub fn parse_stat(line: &str) -> Result<ProcessStat, ProcessMetricsError> {
    let end = line.rfind(')').ok_or(ProcessMetricsError::NoCommandEnd)?;
    let fields: Vec<&str> = line[end + 1..].split_whitespace().collect();
    // `fields[0]` is field 3 (state): field n of proc(5) is `fields[n - 3]`.
    let field = |number: usize, name: &'static str| -> Result<u64, ProcessMetricsError> {
        let value = fields
            .get(number - 3)
            .ok_or(ProcessMetricsError::MissingField { field: name })?;
        value.parse().map_err(|_| ProcessMetricsError::NotANumber {
            field: name,
            value: (*value).to_string(),
        })
    };
    Ok(ProcessStat {
        user_ticks: field(14, "utime")?,
        system_ticks: field(15, "stime")?,
        threads: field(20, "num_threads")?,
        start_ticks_after_boot: field(22, "starttime")?,
        virtual_memory_bytes: field(23, "vsize")?,
    })
}

/// The value in bytes of a `Name:   1234 kB` line of `/proc/<pid>/status` (`VmRSS`, ...).
pub fn parse_status_kilobytes(
    status: &str,
    field: &'static str,
) -> Result<u64, ProcessMetricsError> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .ok_or(ProcessMetricsError::MissingField { field })?;
    let number = line.trim().trim_end_matches("kB").trim();
    let kilobytes: u64 = number
        .parse()
        .map_err(|_| ProcessMetricsError::NotANumber {
            field,
            value: number.to_string(),
        })?;
    Ok(kilobytes.saturating_mul(1024))
}

/// The soft limit of open files in `/proc/<pid>/limits` (`None`: unlimited).
pub fn parse_max_open_files(limits: &str) -> Result<Option<u64>, ProcessMetricsError> {
    const FIELD: &str = "Max open files";
    let soft = limits
        .lines()
        .find_map(|line| line.strip_prefix(FIELD))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or(ProcessMetricsError::MissingField { field: FIELD })?;
    if soft == "unlimited" {
        return Ok(None);
    }
    soft.parse()
        .map(Some)
        .map_err(|_| ProcessMetricsError::NotANumber {
            field: FIELD,
            value: soft.to_string(),
        })
}

/// The boot time (`btime`, seconds since the Unix epoch) in `/proc/stat`.
pub fn parse_boot_time(system_stat: &str) -> Result<u64, ProcessMetricsError> {
    const FIELD: &str = "btime";
    let value = system_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .ok_or(ProcessMetricsError::MissingField { field: FIELD })?
        .trim();
    value.parse().map_err(|_| ProcessMetricsError::NotANumber {
        field: FIELD,
        value: value.to_string(),
    })
}

/// One reading of the process metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessSample {
    /// User plus kernel CPU time so far (seconds).
    pub cpu_seconds: f64,
    /// Resident memory (bytes).
    pub resident_memory_bytes: u64,
    /// Virtual memory (bytes).
    pub virtual_memory_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit of open file descriptors (`None`: unlimited).
    pub max_fds: Option<u64>,
    /// When the process started (seconds since the Unix epoch).
    pub start_time_seconds: f64,
    /// Threads of the process.
    pub threads: u64,
}

impl ProcessSample {
    /// Adds the standard process metrics to a scrape.
    pub fn export(&self, exposition: &mut Exposition) {
        exposition.counter_float(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds,
        );
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Some(self.resident_memory_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Some(self.virtual_memory_bytes),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                Some(self.open_fds),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                self.max_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                Some(self.threads),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                exposition.gauge(name, help, value);
            }
        }
        exposition.gauge_float(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            self.start_time_seconds,
        );
    }
}

/// Reads this process's metrics from `/proc/self` (Linux only).
pub fn sample() -> Result<ProcessSample, ProcessMetricsError> {
    if !cfg!(target_os = "linux") {
        return Err(ProcessMetricsError::Unsupported);
    }
    let stat = parse_stat(&read_proc("/proc/self/stat")?)?;
    let resident_memory_bytes = parse_status_kilobytes(&read_proc("/proc/self/status")?, "VmRSS")?;
    let max_fds = parse_max_open_files(&read_proc("/proc/self/limits")?)?;
    let boot_time = parse_boot_time(&read_proc("/proc/stat")?)?;
    Ok(ProcessSample {
        cpu_seconds: stat.cpu_seconds(),
        resident_memory_bytes,
        virtual_memory_bytes: stat.virtual_memory_bytes,
        open_fds: count_open_fds()?,
        max_fds,
        start_time_seconds: boot_time as f64 + stat.start_ticks_after_boot as f64 / USER_HZ as f64,
        threads: stat.threads,
    })
}

/// This process's user plus kernel CPU time so far, in seconds (Linux only): what a
/// benchmark client adds to the nodes' `process_cpu_seconds_total`.
pub fn cpu_seconds() -> Result<f64, ProcessMetricsError> {
    if !cfg!(target_os = "linux") {
        return Err(ProcessMetricsError::Unsupported);
    }
    Ok(parse_stat(&read_proc("/proc/self/stat")?)?.cpu_seconds())
}

/// Adds the process metrics to a scrape, or nothing where they cannot be read (not Linux,
/// or `/proc` unreadable: logged, the rest of the scrape is unaffected).
pub fn export(exposition: &mut Exposition) {
    match sample() {
        Ok(sample) => sample.export(exposition),
        Err(ProcessMetricsError::Unsupported) => {}
        Err(error) => tracing::debug!(%error, "process metrics omitted"),
    }
}

/// The text of a `/proc` file, at most [`PROC_FILE_BYTES_MAX`] bytes.
fn read_proc(path: &str) -> Result<String, ProcessMetricsError> {
    use std::io::Read;
    let failed = |cause| ProcessMetricsError::Read {
        path: path.to_string(),
        cause,
    };
    let file = std::fs::File::open(Path::new(path)).map_err(failed)?;
    let mut text = String::new();
    file.take(PROC_FILE_BYTES_MAX)
        .read_to_string(&mut text)
        .map_err(failed)?;
    Ok(text)
}

/// Entries of `/proc/self/fd` (the directory's own descriptor included, as other
/// Prometheus clients count it), at most [`OPEN_FDS_COUNTED_MAX`].
fn count_open_fds() -> Result<u64, ProcessMetricsError> {
    const PATH: &str = "/proc/self/fd";
    let entries = std::fs::read_dir(PATH).map_err(|cause| ProcessMetricsError::Read {
        path: PATH.to_string(),
        cause,
    })?;
    Ok(entries.take(OPEN_FDS_COUNTED_MAX as usize).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real stat line whose command name holds spaces and parentheses, ") (" included,
    /// which a split on the first ')' or on whitespace would misread.
    const STAT: &str = "8225 (my (odd) ) name) S 8219 8219 6284 0 -1 4194304 101 0 0 0 \
        1234 567 0 0 20 0 7 0 44193 3133440 412 18446744073709551615 94466464718848 \
        94466464738729 140736280233472 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = parse_stat(STAT).expect("a valid stat line");
        assert_eq!(
            stat,
            ProcessStat {
                user_ticks: 1234,
                system_ticks: 567,
                threads: 7,
                start_ticks_after_boot: 44193,
                virtual_memory_bytes: 3_133_440,
            }
        );
        assert!((stat.cpu_seconds() - 18.01).abs() < 1e-9);
    }

    #[test]
    fn a_stat_line_cut_short_or_garbled_is_an_error_not_a_panic() {
        assert!(matches!(
            parse_stat("8225 no parenthesis S 1 2"),
            Err(ProcessMetricsError::NoCommandEnd)
        ));
        assert!(matches!(
            parse_stat("8225 (cat) R 8219 8219"),
            Err(ProcessMetricsError::MissingField { field: "utime" })
        ));
        let garbled = STAT.replace(" 1234 ", " 12x4 ");
        assert!(matches!(
            parse_stat(&garbled),
            Err(ProcessMetricsError::NotANumber { field: "utime", .. })
        ));
        assert!(parse_stat("").is_err());
        assert!(parse_stat(")").is_err());
    }

    #[test]
    fn status_limits_and_boot_time_are_parsed() {
        let status = "Name:\tdtx\nVmSize:\t    3892 kB\nVmRSS:\t    2016 kB\nThreads:\t1\n";
        assert_eq!(
            parse_status_kilobytes(status, "VmRSS").ok(),
            Some(2016 * 1024)
        );
        assert_eq!(
            parse_status_kilobytes(status, "VmSize").ok(),
            Some(3892 * 1024)
        );
        assert!(parse_status_kilobytes(status, "VmSwap").is_err());
        let limits =
            "Limit                     Soft Limit           Hard Limit           Units     \n\
            Max cpu time              unlimited            unlimited            seconds   \n\
            Max open files            20000                40000                files     \n";
        assert_eq!(parse_max_open_files(limits).ok(), Some(Some(20000)));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited).ok(), Some(None));
        assert!(parse_max_open_files("Max cpu time unlimited").is_err());
        let system = "cpu  1 2 3\nintr 5\nbtime 1796213914\nprocesses 9\n";
        assert_eq!(parse_boot_time(system).ok(), Some(1_796_213_914));
        assert!(parse_boot_time("btime soon\n").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_sampled_with_plausible_values() {
        // Burn CPU until the counter moves by two clock ticks (a counter that never moves
        // fails the test after 20 s of wall time).
        let start = cpu_seconds().expect("own CPU time");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut sum = 0u64;
        while cpu_seconds().expect("own CPU time") < start + 2.0 / USER_HZ as f64 {
            assert!(
                std::time::Instant::now() < deadline,
                "CPU time stays {start}"
            );
            for index in 0..100_000u64 {
                sum = std::hint::black_box(sum.wrapping_add(index.wrapping_mul(index)));
            }
        }
        let sample = sample().expect("/proc/self is readable on Linux");
        assert!(sample.cpu_seconds > 0.0, "{sample:?}");
        assert!(sample.resident_memory_bytes > 1024 * 1024, "{sample:?}");
        assert!(
            sample.virtual_memory_bytes >= sample.resident_memory_bytes,
            "{sample:?}"
        );
        assert!(sample.open_fds >= 3, "{sample:?}");
        assert!(sample.threads >= 1, "{sample:?}");
        assert!(sample.start_time_seconds > 1.5e9, "{sample:?}");
        let cpu = cpu_seconds().expect("own CPU time");
        assert!(cpu >= sample.cpu_seconds, "{cpu} < {sample:?}");
    }
}
