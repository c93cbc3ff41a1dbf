//! The in-memory history of a trace's samples: the whole process and every stack at each
//! interval, and the growth they show so far.

use std::{collections::HashMap, time::Instant};

use tracer_common::StackKey;

use crate::{
    collect::KernelSnapshot,
    growth::{self, MIN_SAMPLES, Thresholds, settled},
    report::{StackPoint, TimelinePoint},
};

/// Per-interval samples of the whole process and of every stack.
pub struct SampleHistory {
    started: Instant,
    times: Vec<f64>,
    totals: Vec<u64>,
    rss: Vec<Option<u64>>,
    /// Per stack, (bytes, allocations) at each sample; zeros before it first appeared.
    series: HashMap<StackKey, Vec<(u64, u64)>>,
}

impl SampleHistory {
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
