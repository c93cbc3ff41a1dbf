//! The one place these tests use leaktracer's library: load the real eBPF object, attach its
//! programs to this binary's trigger functions for this process only, and read back what the
//! kernel recorded. (Kept narrow so a change to the attach or collect API is adapted here.)

use std::{io::Write, path::PathBuf};

use leaktracer::{
    attach::{
        allocator::{self, AllocatorOverride, AttachPlan},
        probes::{self, MapSizes, Probes},
    },
    collect::{Collector, StackFigures},
};
use tracer_common::{AllocKey, AllocRecord, Counter, StackKey, threads::ThreadStart};

use crate::triggers;

/// The real programs, attached to the triggers of this process.
pub struct KernelTracer {
    // Declared first so it is dropped first: it maps the record table of the loaded object.
    collector: Collector,
    probes: Probes,
}

impl KernelTracer {
    /// Loads and attaches, or `None` after saying why when this process may not load eBPF
    /// programs (an unprivileged `cargo test`).
    pub fn start() -> Option<Self> {
        if let Err(why) = probes::check_privileges() {
            // Straight to stderr: the harness would hide a print of a passing test.
            let _ = writeln!(std::io::stderr(), "skipped: {why}");
            return None;
        }
        let mut probes = Probes::load(MapSizes {
            cgroup: None,
            empty_programs: false,
            sample_bytes: 0,
            max_allocations: 4096,
            max_stacks: 1024,
            max_depth: tracer_common::unwind::DEFAULT_MAX_DEPTH,
            unwind_rows: 1 << 16,
            stop_at_exit: false,
        })
        .expect("the eBPF object loads");
        probes
            .attach(&trigger_plan(), std::process::id())
            .expect("the programs attach to the triggers");
        probes
            .trace_process(std::process::id())
            .expect("this process's system calls are traced");
        let collector = probes.collector().expect("the collector starts");
        Some(Self { collector, probes })
    }

    /// Every outstanding (address, bytes) this process has, in address order, after settling
    /// the munmap ranges the kernel left to userspace (as the tracer does before each snapshot).
    pub fn outstanding(&mut self) -> Vec<(u64, u64)> {
        self.collector
            .drain_unmaps(self.probes.maps_mut())
            .expect("munmap ranges settle");
        let pid = std::process::id();
        let mut records: Vec<(u64, u64)> = self
            .collector
            .records_while(self.probes.maps(), &|| true)
            .expect("the records read")
            .expect("read whole: nothing asks to stop")
            .into_iter()
            .filter(|(key, _)| key.tgid == pid && triggers::made_by_triggers(key.addr))
            .map(|(key, record)| (key.addr, record.size))
            .collect();
        records.sort_unstable();
        records
    }

    /// Outstanding bytes summed over every stack of the kernel snapshot (what reports show).
    pub fn snapshot_bytes(&mut self) -> u64 {
        self.snapshot()
            .stacks
            .iter()
            .map(|(_, figures)| figures.outstanding_bytes)
            .sum()
    }

    /// A loss or event counter of the snapshot, summed over CPUs.
    pub fn counter(&mut self, counter: Counter) -> u64 {
        self.snapshot().counters[counter as usize]
    }

    /// This process's mapping record that contains `addr`, if the kernel holds one.
    pub fn mapping_at(&self, addr: u64) -> Option<(AllocKey, AllocRecord)> {
        let pid = std::process::id();
        self.collector
            .records_while(self.probes.maps(), &|| true)
            .expect("the records read")
            .expect("read whole: nothing asks to stop")
            .into_iter()
            .find(|(key, record)| {
                key.tgid == pid && (key.addr..key.addr + record.size).contains(&addr)
            })
    }

    /// Where the kernel says thread `tid` started, while it counts it alive.
    pub fn live_thread(&self, tid: u32) -> Option<ThreadStart> {
        self.probes.maps().live_threads.get(&tid, 0).ok()
    }

    /// The snapshot's figures of this process's stack `stack_id`.
    pub fn stack_figures(&mut self, stack_id: u64) -> Option<StackFigures> {
        let key = StackKey::new(std::process::id(), stack_id);
        self.snapshot()
            .stacks
            .into_iter()
            .find_map(|(k, figures)| (k == key).then_some(figures))
    }

    fn snapshot(&mut self) -> leaktracer::collect::MapsSnapshot {
        self.collector
            .snapshot(self.probes.maps(), None)
            .expect("the snapshot reads")
    }
}

/// The triggers to probe: the heap family as `--allocator THIS_BINARY:trigger_` plans it
/// (mappings need no probe: their system calls are traced, for this process once it is
/// traced).
fn trigger_plan() -> AttachPlan {
    let exe: PathBuf = std::env::current_exe().expect("this test's executable");
    let pid = std::process::id();
    let heap = AllocatorOverride {
        path: exe.display().to_string(),
        prefix: triggers::PREFIX.to_string(),
    };
    let plan = allocator::plan(
        pid,
        &allocator::candidates_from_paths(std::slice::from_ref(&exe)),
        Some(&heap),
    )
    .expect("the heap triggers are planned");
    let object = &plan.objects[0];
    let probed: Vec<&str> = object
        .sites
        .iter()
        .flat_map(|site| site.symbols.iter().map(String::as_str))
        .collect();
    for wanted in ["malloc", "free", "realloc", "posix_memalign"] {
        let name = format!("{}{wanted}", triggers::PREFIX);
        assert!(
            probed.contains(&name.as_str()),
            "{name} planned: {probed:?}"
        );
    }
    plan
}
