//! The in-memory history of a trace's samples: the whole process and every stack at each
//! interval, and the growth they show so far.
//!
//! Growth is judged on what memory costs: a thread stack counts what is resident of it, not
//! the megabytes it reserves, and a stack of thread stacks is classed by its thread count (see
//! [`growth::analyze_thread_stacks`]).

use std::{collections::HashMap, time::Instant};

use tracer_common::StackKey;

use crate::{
    collect::{MapsSnapshot, MemoryKind, StackFigures},
    growth::{self, MIN_SAMPLES, Thresholds, settled},
    report::{StackPoint, TimelinePoint},
};

/// Per-interval samples of the whole process and of every stack.
pub struct SampleHistory {
    started: Instant,
    times: Vec<f64>,
    /// Outstanding bytes of the whole process at each sample.
    totals: Vec<u64>,
    /// The same, thread stacks counted by what is resident of them.
    costs: Vec<u64>,
    rss: Vec<Option<u64>>,
    /// Per stack, its figures at each sample; zeros before it first appeared.
    series: HashMap<StackKey, Vec<StackFigures>>,
}

impl SampleHistory {
    /// Starts the clock: samples are timed from here.
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            times: Vec::new(),
            totals: Vec::new(),
            costs: Vec::new(),
            rss: Vec::new(),
            series: HashMap::new(),
        }
    }

    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Adds a sample taken now.
    pub fn sample(&mut self, snapshot: &MapsSnapshot, rss: Option<u64>) {
        self.sample_at(self.elapsed_secs(), snapshot, rss);
    }

    /// Adds a sample of the state at `t_secs` since the start.
    pub fn sample_at(&mut self, t_secs: f64, snapshot: &MapsSnapshot, rss: Option<u64>) {
        let index = self.times.len();
        self.times.push(t_secs);
        let stacks = snapshot.stacks.iter().map(|(_, s)| s);
        self.totals
            .push(stacks.clone().map(|s| s.outstanding_bytes).sum());
        self.costs.push(stacks.map(StackFigures::cost_bytes).sum());
        self.rss.push(rss);
        for (key, figures) in &snapshot.stacks {
            let series = self
                .series
                .entry(*key)
                .or_insert_with(|| vec![StackFigures::default(); index]);
            series.push(*figures);
        }
        // Stacks absent from this sample have nothing outstanding.
        for series in self.series.values_mut() {
            series.resize(index + 1, StackFigures::default());
        }
    }

    /// Slope of the process's outstanding bytes so far (thread stacks by their cost).
    pub fn total_rate(&self) -> f64 {
        let costs: Vec<f64> = self.costs.iter().map(|b| *b as f64).collect();
        growth::slope(&self.times, &costs)
    }

    /// The stack whose cost grew fastest so far, with its rate: thread stacks by what is
    /// resident of them, so idle threads' reserved megabytes do not outrank a leak.
    pub fn top_grower(&self) -> Option<(StackKey, f64)> {
        self.series
            .iter()
            .map(|(key, series)| {
                let bytes: Vec<f64> = series.iter().map(|s| s.cost_bytes() as f64).collect();
                (*key, growth::slope(&self.times, &bytes))
            })
            .filter(|(_, rate)| *rate > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// True when `key`'s records are threads' stacks (at its latest sample).
    pub fn is_thread_stacks(&self, key: &StackKey) -> bool {
        self.series
            .get(key)
            .and_then(|series| series.iter().rev().find(|s| s.outstanding_allocations > 0))
            .is_some_and(|s| s.kind == MemoryKind::ThreadStack)
    }

    /// The process's outstanding bytes at the last sample, thread stacks by their cost.
    pub fn last_total(&self) -> u64 {
        self.costs.last().copied().unwrap_or(0)
    }

    pub fn timeline(&self) -> Vec<TimelinePoint> {
        (0..self.times.len())
            .map(|i| TimelinePoint {
                t_secs: self.times[i],
                outstanding_bytes: self.totals[i],
                rss_bytes: self.rss[i],
                cost_bytes: Some(self.costs[i]),
            })
            .collect()
    }

    /// A stack's samples and their growth analysis; no analysis from fewer than
    /// [`MIN_SAMPLES`] settled samples. `keys`: the kernel stacks the report shows as this
    /// one, their samples summed.
    pub fn stack_history(
        &self,
        keys: &[StackKey],
        thresholds: &Thresholds,
    ) -> (Vec<StackPoint>, Option<growth::Growth>) {
        let mut series = vec![StackFigures::default(); self.times.len()];
        for own in keys.iter().filter_map(|key| self.series.get(key)) {
            for (sum, figures) in series.iter_mut().zip(own) {
                sum.add(figures);
            }
        }
        let thread_stacks = series.iter().any(|s| s.kind == MemoryKind::ThreadStack);
        let points: Vec<StackPoint> = self
            .times
            .iter()
            .zip(&series)
            .map(|(t, figures)| StackPoint {
                t_secs: *t,
                outstanding_bytes: figures.outstanding_bytes,
                outstanding_allocations: figures.outstanding_allocations,
                resident_bytes: figures.resident_bytes.filter(|_| thread_stacks),
                threads: thread_stacks.then_some(figures.threads),
            })
            .collect();
        let costs: Vec<f64> = series.iter().map(|s| s.cost_bytes() as f64).collect();
        let (times, costs) = settled(&self.times, &costs);
        if times.len() < MIN_SAMPLES {
            return (points, None);
        }
        let growth = if thread_stacks {
            let threads: Vec<f64> = series.iter().map(|s| s.threads as f64).collect();
            let (_, threads) = settled(&self.times, &threads);
            growth::analyze_thread_stacks(times, costs, threads, thresholds)
        } else {
            growth::analyze(times, costs, thresholds)
        };
        (points, Some(growth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of a leak holding `leak` bytes and of `threads` idle threads, each with an
    /// 8 MiB stack of which 12 KiB are resident.
    fn snapshot(leak: u64, threads: u64) -> MapsSnapshot {
        let mut stacks = vec![(
            StackKey::new(7, 1),
            StackFigures {
                outstanding_bytes: leak,
                outstanding_allocations: leak / 2048,
                ..Default::default()
            },
        )];
        if threads > 0 {
            stacks.push((
                StackKey::new(7, 2),
                StackFigures {
                    outstanding_bytes: threads * (8 << 20),
                    outstanding_allocations: threads,
                    kind: MemoryKind::ThreadStack,
                    threads,
                    resident_bytes: Some(threads * 12 * 1024),
                    ..Default::default()
                },
            ));
        }
        MapsSnapshot {
            stacks,
            ..Default::default()
        }
    }

    /// 8 idle threads started one a second beside a leak of 100 KiB/s: the leak is the top
    /// grower, and the threads' stacks, a pool that filled, are a plateau of thread stacks.
    #[test]
    fn idle_threads_do_not_outrank_a_leak() {
        let mut history = SampleHistory::start();
        for t in 0..=16u64 {
            history.sample_at(t as f64, &snapshot(t * 100 * 1024, t.min(8)), None);
        }
        let (top, rate) = history.top_grower().unwrap();
        assert_eq!(top, StackKey::new(7, 1));
        assert!((rate - 102_400.0).abs() < 1e-6, "{rate}");
        // The process grows by its leak and the threads' resident pages, not by their stacks'
        // reserved 8 MiB each.
        assert!(history.total_rate() < 110_000.0, "{}", history.total_rate());
        let timeline = history.timeline();
        assert_eq!(timeline[16].outstanding_bytes, 1_638_400 + (64 << 20));
        assert_eq!(timeline[16].cost_bytes, Some(1_638_400 + 8 * 12 * 1024));

        let thresholds = Thresholds::default();
        let (points, growth) = history.stack_history(&[StackKey::new(7, 2)], &thresholds);
        let growth = growth.unwrap();
        assert_eq!(growth.class, crate::growth::Class::Plateau);
        assert_eq!(points[16].threads, Some(8));
        assert_eq!(points[16].resident_bytes, Some(8 * 12 * 1024));
        assert_eq!(points[16].outstanding_bytes, 64 << 20);
        assert!(history.is_thread_stacks(&StackKey::new(7, 2)));
        assert!(!history.is_thread_stacks(&StackKey::new(7, 1)));
        let (points, leak) = history.stack_history(&[StackKey::new(7, 1)], &thresholds);
        assert_eq!(leak.unwrap().class, crate::growth::Class::Leak);
        assert_eq!(
            (points[16].threads, points[16].resident_bytes),
            (None, None)
        );
    }

    /// A leak whose records land on two kernel stacks the report shows as one (a call's first
    /// run and its later, specialized runs): each alone grows by fits, their sum steadily.
    #[test]
    fn the_history_of_stacks_shown_alike_is_their_sum() {
        let mut history = SampleHistory::start();
        let (a, b) = (StackKey::new(7, 1), StackKey::new(7, 2));
        for t in 0..=16u64 {
            let figures = |bytes| StackFigures {
                outstanding_bytes: bytes,
                outstanding_allocations: bytes / 1024,
                ..Default::default()
            };
            let snapshot = MapsSnapshot {
                stacks: vec![
                    (a, figures(t.div_ceil(2) * 2048)),
                    (b, figures(t / 2 * 2048)),
                ],
                ..Default::default()
            };
            history.sample_at(t as f64, &snapshot, None);
        }
        let thresholds = Thresholds::default();
        let (points, growth) = history.stack_history(&[a, b], &thresholds);
        assert_eq!(points[16].outstanding_bytes, 16 * 2048);
        assert_eq!(points[16].outstanding_allocations, 32);
        assert_eq!(points[3].outstanding_bytes, 3 * 2048);
        assert_eq!(growth.unwrap().class, crate::growth::Class::Leak);
    }
}
