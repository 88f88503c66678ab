//! The phi-accrual math (Hayashibara et al. 2004): how unlikely a silence is given the
//! arrival gaps seen so far, and the crash-to-suspicion bound a configuration implies.

use super::DetectorConfig;
use core::time::Duration;

/// Arrival gaps needed before phi uses their mean and deviation.
pub const WARM_UP_SAMPLES: usize = 8;

/// phi = -log10(P(a heartbeat arrives later than `silence`)), with the normal CDF replaced
/// by its logistic approximation (as in Akka and Cassandra), which stays finite far out in
/// the tail.
pub fn phi(silence: f64, mean: f64, deviation: f64) -> f64 {
    let y = (silence - mean) / deviation;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let later = if silence > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    -(later.max(f64::MIN_POSITIVE)).log10()
}

/// The inter-arrival jitter, as a multiple of the heartbeat interval, that
/// [`detection_bound`] budgets for: heartbeats may arrive with a standard deviation of up
/// to one interval (scheduling delays on a loaded machine, gossip paths of different
/// lengths) and the bound still holds.
pub const DETECTION_JITTER_INTERVALS: f64 = 1.0;

/// The crash-to-suspicion bound implied by a detector configuration: the silence after
/// which phi exceeds the threshold for a member whose heartbeats arrive every `interval`
/// with a standard deviation of [`DETECTION_JITTER_INTERVALS`] intervals (plus the
/// acceptable pause), plus one interval, since an observer evaluates suspicion once per
/// heartbeat round. It applies once the observer has heard enough arrivals to be past the
/// detector's warm-up ([`WARM_UP_SAMPLES`]); before that phi uses a
/// deliberately slow first estimate. With the defaults (100 ms, threshold 8, pause 50 ms): 773 ms. Steadier
/// arrivals are suspected sooner (about 300 ms on an idle machine); a member whose
/// arrivals jitter more than that can take longer.
pub fn detection_bound(config: &DetectorConfig) -> Duration {
    let interval_ms = config.interval.as_secs_f64() * 1000.0;
    let mean_ms = interval_ms + config.acceptable_pause.as_secs_f64() * 1000.0;
    let deviation_ms = (interval_ms * DETECTION_JITTER_INTERVALS)
        .max(config.std_deviation_min.as_secs_f64() * 1000.0)
        .max(0.001);
    let mut silence_ms = mean_ms;
    // phi grows monotonically with silence: step until it crosses (bounded loop).
    for _ in 0..10_000_000 {
        if phi(silence_ms, mean_ms, deviation_ms) > config.phi_threshold {
            break;
        }
        silence_ms += 1.0;
    }
    Duration::from_secs_f64((silence_ms + interval_ms) / 1000.0)
}
