//! Growth analysis over a trace's snapshots: how fast each stack grows and what kind of growth
//! it is.
//!
//! For a series of (time, outstanding bytes) samples:
//! - `bytes_per_sec`: least-squares slope over the whole trace;
//! - `non_decreasing_ratio`: the share of intervals in which the bytes did not go down;
//! - the class, from the slopes of the first and second halves of the trace (s1, s2). A half
//!   grows when its slope is at least `--min-rate` and more than four standard errors from zero
//!   (so the noise of in-flight churn never "grows"):
//!   - `leak`: the second half grows (s2 >= min rate), steadily (non-decreasing ratio >=
//!     `--steady-ratio`) and without slowing down (s2 >= `--slowdown-ratio` x s1);
//!   - `growing`: the second half grows, but unsteadily or slowing down;
//!   - `plateau`: the second half is flat and stands above the first half's low point by more
//!     than four times its own noise and by more than the minimum rate over half the trace (a
//!     cache that filled up);
//!   - `churn`: no net growth.
//! - severity, from the whole-trace slope, for `leak` and `growing` only: `low` below
//!   `--severity-rates`' first value, then `medium`, `high`, `critical`; `none` otherwise.
//!
//! A stack of thread stacks is judged on two series (see [`analyze_thread_stacks`]): its rates
//! and severity on what is resident of the stacks (what they cost), its class on how many live
//! threads run on them. Their reserved megabytes are bounded by the thread count, so they are a
//! leak only when that count keeps growing: a pool that filled is a plateau.

use serde::{Deserialize, Serialize};

/// Thresholds of the classification, from command-line flags.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Slopes below this (bytes/s) are flat.
    pub min_rate: f64,
    /// A leak grows in at least this share of intervals.
    pub steady_ratio: f64,
    /// A leak's second-half slope is at least this fraction of its first-half slope.
    pub slowdown_ratio: f64,
    /// Rates (bytes/s) from which severity is medium, high, critical.
    pub severity_rates: [f64; 3],
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_rate: 128.0,
            steady_ratio: 0.8,
            slowdown_ratio: 0.5,
            severity_rates: [10.0 * 1024.0, 100.0 * 1024.0, 1024.0 * 1024.0],
        }
    }
}

/// What the growth of one series looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Leak,
    Growing,
    Plateau,
    Churn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    None,
    Low,
    Medium,
    High,
    Critical,
}

/// The JSON `growth` object of a stack.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    pub bytes_per_sec: f64,
    pub non_decreasing_ratio: f64,
    pub class: Class,
    pub severity: Severity,
    /// Slope over the second half of the trace: the current rate of a leak that started late.
    #[serde(default)]
    pub recent_bytes_per_sec: f64,
    /// Thread stacks: the slope of the count of live threads on them (threads per second),
    /// which their class is judged on. Absent for other stacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads_per_sec: Option<f64>,
}

/// Least-squares slope of `values` over `times`; 0 with fewer than two distinct times.
pub fn slope(times: &[f64], values: &[f64]) -> f64 {
    let n = times.len().min(values.len());
    if n < 2 {
        return 0.0;
    }
    let mean_t = times[..n].iter().sum::<f64>() / n as f64;
    let mean_v = values[..n].iter().sum::<f64>() / n as f64;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for i in 0..n {
        let dt = times[i] - mean_t;
        covariance += dt * (values[i] - mean_v);
        variance += dt * dt;
    }
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

/// The slope of a series, zeroed unless it stands out of the noise: more than four standard
/// errors from zero.
fn significant_slope(times: &[f64], values: &[f64]) -> f64 {
    let n = times.len().min(values.len());
    if n < 2 {
        return 0.0;
    }
    let rate = slope(&times[..n], &values[..n]);
    let mean_t = times[..n].iter().sum::<f64>() / n as f64;
    let mean_v = values[..n].iter().sum::<f64>() / n as f64;
    if n < 3 {
        return rate;
    }
    let squared_residuals: f64 = (0..n)
        .map(|i| {
            let fitted = mean_v + rate * (times[i] - mean_t);
            (values[i] - fitted).powi(2)
        })
        .sum();
    let spread: f64 = times[..n].iter().map(|t| (t - mean_t).powi(2)).sum();
    // Standard error of the slope; a trend is the slope at more than 4 of them (t > 4).
    let standard_error = (squared_residuals / (n - 2) as f64 / spread).sqrt();
    if rate.abs() > 4.0 * standard_error {
        rate
    } else {
        0.0
    }
}

/// Classifies a series of samples.
pub fn analyze(times: &[f64], values: &[f64], thresholds: &Thresholds) -> Growth {
    let n = times.len().min(values.len());
    let whole = slope(&times[..n], &values[..n]);
    let intervals = n.saturating_sub(1);
    let non_decreasing = (1..n).filter(|&i| values[i] >= values[i - 1]).count();
    let ratio = if intervals == 0 {
        0.0
    } else {
        non_decreasing as f64 / intervals as f64
    };
    // Halves by time, sharing the middle sample.
    let middle = n / 2;
    let (first, second) = if n >= 4 {
        (
            slope(&times[..=middle], &values[..=middle]),
            significant_slope(&times[middle..n], &values[middle..n]),
        )
    } else {
        (whole, significant_slope(&times[..n], &values[..n]))
    };
    let class = if second < thresholds.min_rate {
        // Flat now. A plateau stands clearly above where the first half started: by more
        // than four times the noise of the flat part, and by more than the minimum rate would
        // add over a half.
        let late = &values[middle..n];
        let late_mean = late.iter().sum::<f64>() / late.len().max(1) as f64;
        let late_noise = (late.iter().map(|v| (v - late_mean).powi(2)).sum::<f64>()
            / late.len().max(1) as f64)
            .sqrt();
        let early_low = values[..=middle.min(n.saturating_sub(1))]
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let rise = late_mean - early_low;
        let half_span =
            times.get(middle).copied().unwrap_or(0.0) - times.first().copied().unwrap_or(0.0);
        if rise > 4.0 * late_noise && rise >= thresholds.min_rate * half_span {
            Class::Plateau
        } else {
            Class::Churn
        }
    } else if ratio >= thresholds.steady_ratio && second >= thresholds.slowdown_ratio * first {
        Class::Leak
    } else if significant_slope(&times[..n], &values[..n]) < thresholds.min_rate {
        // Rising lately but not over the trace: a few samples of noise can line up in one
        // half (seen with 64 blocks of random sizes in flight); memory that grows, grows
        // over the whole trace too.
        Class::Churn
    } else {
        Class::Growing
    };
    let severity = match class {
        Class::Leak | Class::Growing => severity(whole.max(second), thresholds),
        Class::Plateau | Class::Churn => Severity::None,
    };
    Growth {
        bytes_per_sec: whole,
        non_decreasing_ratio: ratio,
        class,
        severity,
        recent_bytes_per_sec: second,
        threads_per_sec: None,
    }
}

/// Threads a stack of thread stacks must add over the second half of the trace (by its slope)
/// for its count to grow: a thread or two started late is an event, not a trend.
pub const MIN_THREADS_PER_HALF: f64 = 2.0;

/// Classifies a stack of thread stacks: `costs` are the bytes resident of them at each sample
/// (rates and severity come from these), `threads` the live threads on them (the class comes
/// from these, by [`analyze`]'s rules with a minimum rate of [`MIN_THREADS_PER_HALF`] threads
/// over the second half): idle threads started by a pool that stops growing are a plateau, a
/// thread count that keeps rising is a leak, of threads.
pub fn analyze_thread_stacks(
    times: &[f64],
    costs: &[f64],
    threads: &[f64],
    thresholds: &Thresholds,
) -> Growth {
    let n = times.len().min(costs.len()).min(threads.len());
    let (times, costs, threads) = (&times[..n], &costs[..n], &threads[..n]);
    let cost = analyze(times, costs, thresholds);
    // The second half as `analyze` takes it: from the middle sample on (4 samples or more).
    let from = if n >= 4 { n / 2 } else { 0 };
    let second_span =
        times.last().copied().unwrap_or(0.0) - times.get(from).copied().unwrap_or(0.0);
    let min_rate = if second_span > 0.0 {
        MIN_THREADS_PER_HALF / second_span
    } else {
        f64::INFINITY
    };
    let count = analyze(
        times,
        threads,
        &Thresholds {
            min_rate,
            ..*thresholds
        },
    );
    let severity = match count.class {
        Class::Leak | Class::Growing => severity(
            cost.bytes_per_sec.max(cost.recent_bytes_per_sec),
            thresholds,
        ),
        Class::Plateau | Class::Churn => Severity::None,
    };
    Growth {
        class: count.class,
        severity,
        non_decreasing_ratio: count.non_decreasing_ratio,
        threads_per_sec: Some(count.bytes_per_sec),
        ..cost
    }
}

fn severity(rate: f64, thresholds: &Thresholds) -> Severity {
    let [medium, high, critical] = thresholds.severity_rates;
    if rate >= critical {
        Severity::Critical
    } else if rate >= high {
        Severity::High
    } else if rate >= medium {
        Severity::Medium
    } else {
        Severity::Low
    }
}

/// Growth is judged on at least this many samples (after the first).
pub const MIN_SAMPLES: usize = 3;

/// The samples growth is judged on: all but the first, taken at attach, when every stack
/// starts from zero only because nothing earlier is known (its jump to the in-flight level is
/// not growth).
pub fn settled<'a>(times: &'a [f64], values: &'a [f64]) -> (&'a [f64], &'a [f64]) {
    if times.len() > 2 {
        (&times[1..], &values[1..])
    } else {
        (times, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(n: usize) -> Vec<f64> {
        (0..n).map(|i| i as f64 * 5.0).collect()
    }

    #[test]
    fn slope_of_a_line_is_exact() {
        let t = times(13);
        let v: Vec<f64> = t.iter().map(|t| 1000.0 + 2048.0 * t).collect();
        assert!((slope(&t, &v) - 2048.0).abs() < 1e-9);
        assert_eq!(slope(&[1.0], &[5.0]), 0.0);
    }

    #[test]
    fn steady_growth_is_a_leak() {
        let t = times(13);
        let v: Vec<f64> = t.iter().map(|t| 50_000.0 * t).collect();
        let g = analyze(&t, &v, &Thresholds::default());
        assert_eq!(g.class, Class::Leak);
        assert_eq!(g.severity, Severity::Medium);
        assert_eq!(g.non_decreasing_ratio, 1.0);
    }

    #[test]
    fn fill_then_flat_is_a_plateau() {
        let t = times(13);
        let v: Vec<f64> = t.iter().map(|t| (t * 100_000.0).min(1_000_000.0)).collect();
        assert_eq!(
            analyze(&t, &v, &Thresholds::default()).class,
            Class::Plateau
        );
    }

    #[test]
    fn random_in_flight_noise_is_churn() {
        // 64 blocks of 16..2016 bytes in flight, replaced at random: no trend, only noise.
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        let t = times(13);
        for _ in 0..20 {
            let v: Vec<f64> = t
                .iter()
                .map(|_| (0..64).map(|_| 16.0 + 2000.0 * next()).sum())
                .collect();
            assert_eq!(
                analyze(&t, &v, &Thresholds::default()).class,
                Class::Churn,
                "{v:?}"
            );
        }
    }

    #[test]
    fn noise_that_lines_up_in_the_second_half_is_churn() {
        // Measured: churn_step of tests/workloads/growth.c, 60 s at --interval 5s.
        let t = times(13);
        let v = [
            2929.0, 70109.0, 67686.0, 71915.0, 65168.0, 68969.0, 56772.0, 55918.0, 54942.0,
            62798.0, 60682.0, 65157.0, 66129.0,
        ];
        assert_eq!(analyze(&t, &v, &Thresholds::default()).class, Class::Churn);
    }

    #[test]
    fn noise_around_a_level_is_churn() {
        let t = times(13);
        let v: Vec<f64> = (0..13)
            .map(|i| 4000.0 + if i % 2 == 0 { 300.0 } else { -300.0 })
            .collect();
        let g = analyze(&t, &v, &Thresholds::default());
        assert_eq!(g.class, Class::Churn);
        assert_eq!(g.severity, Severity::None);
    }

    /// Live threads at one-second samples, and 12 KiB resident of each one's stack.
    fn thread_stacks(threads: &[f64]) -> Growth {
        let t: Vec<f64> = (0..threads.len()).map(|i| i as f64).collect();
        let costs: Vec<f64> = threads.iter().map(|n| n * 12288.0).collect();
        analyze_thread_stacks(&t, &costs, threads, &Thresholds::default())
    }

    #[test]
    fn a_thread_pool_that_filled_is_a_plateau_of_thread_stacks() {
        // 8 idle threads, one a second, then none for 8 s.
        let pool: Vec<f64> = (0..17).map(|i| (i as f64).min(8.0)).collect();
        let g = thread_stacks(&pool);
        assert_eq!(g.class, Class::Plateau);
        assert_eq!(g.severity, Severity::None);
        // Rates are of what is resident, not of the threads' reserved stacks.
        assert!((g.bytes_per_sec - 12288.0 * g.threads_per_sec.unwrap()).abs() < 1e-6);
    }

    #[test]
    fn a_thread_count_that_keeps_rising_is_a_leak() {
        // Five threads a second, none ending.
        let leak: Vec<f64> = (0..12).map(|i| 5.0 * i as f64).collect();
        let g = thread_stacks(&leak);
        assert_eq!(g.class, Class::Leak);
        assert_eq!(g.threads_per_sec, Some(5.0));
        assert_eq!(g.bytes_per_sec, 5.0 * 12288.0);
        assert_eq!(g.severity, Severity::Medium);
        // One thread started late is not a trend; nor is a count that only changes at random.
        let one_late: Vec<f64> = (0..17).map(|i| f64::from(u8::from(i >= 12))).collect();
        assert_eq!(thread_stacks(&one_late).class, Class::Churn);
        let busy: Vec<f64> = (0..17).map(|i| [4.0, 6.0, 5.0][i % 3]).collect();
        assert_eq!(thread_stacks(&busy).class, Class::Churn);
    }

    #[test]
    fn other_stacks_have_no_thread_rate() {
        let t = times(13);
        let v: Vec<f64> = t.iter().map(|t| 50_000.0 * t).collect();
        let text = serde_json::to_string(&analyze(&t, &v, &Thresholds::default())).unwrap();
        assert!(!text.contains("threads_per_sec"), "{text}");
    }

    #[test]
    fn late_start_is_a_leak_and_slowing_growth_is_growing() {
        let t = times(13);
        let late: Vec<f64> = t.iter().map(|t| ((t - 30.0).max(0.0)) * 10_000.0).collect();
        assert_eq!(
            analyze(&t, &late, &Thresholds::default()).class,
            Class::Leak
        );
        // sqrt-like: still growing at the end, but much slower than at the start.
        let slowing: Vec<f64> = t.iter().map(|t| (t * 1e9).sqrt()).collect();
        assert_eq!(
            analyze(&t, &slowing, &Thresholds::default()).class,
            Class::Growing
        );
    }
}
