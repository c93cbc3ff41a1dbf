//! Samples taken during a trace and what they add up to: the timeline, per-stack growth, and
//! the verdict.

use std::{collections::HashMap, time::Instant};

use tracer_common::StackKey;

use crate::{
    collect::KernelSnapshot,
    growth::{self, Class, Thresholds},
    report::{Stack, StackPoint, TimelinePoint, Verdict, human_bytes, human_duration, human_rate},
    target::memory::MemoryLimit,
};

/// Per-interval samples of the whole process and of every stack.
pub struct Recorder {
    started: Instant,
    times: Vec<f64>,
    totals: Vec<u64>,
    rss: Vec<Option<u64>>,
    /// Per stack, (bytes, allocations) at each sample; zeros before it first appeared.
    series: HashMap<StackKey, Vec<(u64, u64)>>,
}

impl Recorder {
    /// Starts the clock: samples are timed from here.
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            times: Vec::new(),
            totals: Vec::new(),
            rss: Vec::new(),
            series: HashMap::new(),
        }
    }

    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Adds a sample taken now.
    pub fn sample(&mut self, snapshot: &KernelSnapshot, rss: Option<u64>) {
        self.sample_at(self.elapsed_secs(), snapshot, rss);
    }

    /// Adds a sample of the state at `t_secs` since the start.
    pub fn sample_at(&mut self, t_secs: f64, snapshot: &KernelSnapshot, rss: Option<u64>) {
        let index = self.times.len();
        self.times.push(t_secs);
        self.totals.push(
            snapshot
                .stacks
                .iter()
                .map(|(_, s)| s.outstanding_bytes)
                .sum(),
        );
        self.rss.push(rss);
        for (key, stats) in &snapshot.stacks {
            let series = self
                .series
                .entry(*key)
                .or_insert_with(|| vec![(0, 0); index]);
            series.push((stats.outstanding_bytes, stats.outstanding_allocations));
        }
        // Stacks absent from this sample have nothing outstanding.
        for series in self.series.values_mut() {
            series.resize(index + 1, (0, 0));
        }
    }

    /// Slope of the process's outstanding bytes so far.
    pub fn total_rate(&self) -> f64 {
        growth::slope(&self.times, &self.float_totals())
    }

    fn float_totals(&self) -> Vec<f64> {
        self.totals.iter().map(|b| *b as f64).collect()
    }

    /// The stack whose bytes grew fastest so far, with its rate.
    pub fn top_grower(&self) -> Option<(StackKey, f64)> {
        self.series
            .iter()
            .map(|(key, series)| {
                let bytes: Vec<f64> = series.iter().map(|(b, _)| *b as f64).collect();
                (*key, growth::slope(&self.times, &bytes))
            })
            .filter(|(_, rate)| *rate > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    pub fn last_total(&self) -> u64 {
        self.totals.last().copied().unwrap_or(0)
    }

    pub fn timeline(&self) -> Vec<TimelinePoint> {
        (0..self.times.len())
            .map(|i| TimelinePoint {
                t_secs: self.times[i],
                outstanding_bytes: self.totals[i],
                rss_bytes: self.rss[i],
            })
            .collect()
    }

    /// A stack's samples and their growth analysis; no analysis from fewer than
    /// [`MIN_SAMPLES`] settled samples.
    pub fn stack_history(
        &self,
        key: &StackKey,
        thresholds: &Thresholds,
    ) -> (Vec<StackPoint>, Option<growth::Growth>) {
        let series = self.series.get(key).cloned().unwrap_or_default();
        let points: Vec<StackPoint> = self
            .times
            .iter()
            .zip(&series)
            .map(|(t, (bytes, allocations))| StackPoint {
                t_secs: *t,
                outstanding_bytes: *bytes,
                outstanding_allocations: *allocations,
            })
            .collect();
        let bytes: Vec<f64> = series.iter().map(|(b, _)| *b as f64).collect();
        let (times, bytes) = settled(&self.times, &bytes);
        let growth =
            (times.len() >= MIN_SAMPLES).then(|| growth::analyze(times, bytes, thresholds));
        (points, growth)
    }
}

/// Growth is judged on at least this many samples (after the first).
pub const MIN_SAMPLES: usize = 3;

/// The samples growth is judged on: all but the first, taken at attach, when every stack
/// starts from zero only because nothing earlier is known (its jump to the in-flight level is
/// not growth).
fn settled<'a>(times: &'a [f64], values: &'a [f64]) -> (&'a [f64], &'a [f64]) {
    if times.len() > 2 {
        (&times[1..], &values[1..])
    } else {
        (times, values)
    }
}

/// The verdict: is anything leaking, how fast does the process's outstanding memory grow, and
/// when does it reach its limit at that rate.
pub fn verdict(
    stacks: &[Stack],
    timeline: &[TimelinePoint],
    limit: Option<MemoryLimit>,
) -> Verdict {
    let times: Vec<f64> = timeline.iter().map(|p| p.t_secs).collect();
    let bytes: Vec<f64> = timeline
        .iter()
        .map(|p| p.outstanding_bytes as f64)
        .collect();
    let (times, bytes) = settled(&times, &bytes);
    let rate = growth::slope(times, bytes);
    let leaking_stacks = stacks
        .iter()
        .filter(|s| s.growth.is_some_and(|g| g.class == Class::Leak))
        .count();
    let judged = times.len() >= MIN_SAMPLES;
    let seconds_to_limit = limit
        .as_ref()
        .filter(|_| rate > 0.0 && judged)
        .map(|l| l.headroom() as f64 / rate);
    let mut summary = if !judged {
        format!(
            "too short to judge growth: {} samples (trace longer, or sample more often with --interval)",
            times.len()
        )
    } else if leaking_stacks > 0 {
        format!(
            "LEAK: {leaking_stacks} stack{} growing steadily; outstanding memory {}",
            if leaking_stacks == 1 { "" } else { "s" },
            human_rate(rate)
        )
    } else {
        format!(
            "no leak found: no stack grows steadily (outstanding memory {})",
            human_rate(rate)
        )
    };
    if let Some(limit) = &limit {
        match seconds_to_limit {
            Some(secs) => summary.push_str(&format!(
                "; {} limit ({}) reached in about {} at this rate",
                human_bytes(limit.limit_bytes),
                limit.source,
                human_duration(secs)
            )),
            None => summary.push_str(&format!(
                "; limit {} ({})",
                human_bytes(limit.limit_bytes),
                limit.source
            )),
        }
    }
    Verdict {
        leak: leaking_stacks > 0,
        leaking_stacks,
        growth_bytes_per_sec: rate,
        memory_limit_bytes: limit.as_ref().map(|l| l.limit_bytes),
        memory_usage_bytes: limit.as_ref().map(|l| l.usage_bytes),
        memory_limit_source: limit.map(|l| l.source),
        seconds_to_limit,
        summary,
    }
}
