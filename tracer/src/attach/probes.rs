//! Loading the eBPF programs and attaching them to a target's allocator, for that process only.

use std::{
    num::NonZeroU32,
    os::fd::OwnedFd,
    path::Path,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        RawTracePoint, UProbe,
        uprobe::{UProbeLinkId, UProbeScope},
    },
};

use tracer_common::{
    SAMPLE_TABLE_SLOTS,
    programs::{self, Role, globals, maps},
};

use crate::{
    attach::{
        allocator::{AttachPlan, ProbeObject, ProbeSite},
        bpf_sys,
        detach::drop_in_parallel,
        map_memory::{MapKind, MapMemory, MapShape, estimate, possible_cpus},
        multi::{self, MapFds, MultiError, MultiPrograms},
        syscall_events::{self, MappingAttachment},
    },
    collect::EbpfMaps,
    error::TraceError,
    terminal::eprintln_escaped,
};

/// The compiled eBPF object, built by `build.rs` from `tracer-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// The shared return program of every allocating entry point.
const RETURN_PROGRAM: &str = programs::CALL_RETURN.name;

/// Load-time settings, from command-line flags.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// With `--cgroup`: only processes in this cgroup (id, level) count.
    pub cgroup: Option<(u64, u32)>,
    /// Benchmarks only: attach as usual, but every program returns at once.
    pub empty_programs: bool,
    /// `--sample-bytes`: record on average one heap allocation per this many bytes (0: all).
    pub sample_bytes: u64,
    /// Outstanding heap allocations that can be recorded at once.
    pub max_allocations: u32,
    /// Distinct allocation stacks.
    pub max_stacks: u32,
    /// `--max-depth`: frames kept per stack.
    pub max_depth: u32,
    /// `--max-unwind-rows`: room for the unwind rows of every traced object together.
    pub unwind_rows: u32,
    /// `--reachability`: a process is stopped where its picture freezes (see `add_exit_stop`).
    pub stop_at_exit: bool,
}

/// One attached probe, for `--verbose` and the report.
#[derive(Clone, Debug)]
pub struct AttachedProbe {
    pub pid: u32,
    pub object: String,
    pub symbols: Vec<String>,
    /// File offset probed.
    pub offset: u64,
    /// Instructions skipped from the symbol's entry (see attach::placement).
    pub skipped: Vec<String>,
    pub program: &'static str,
    pub is_return: bool,
}

/// One kernel link.
struct Link {
    kind: LinkKind,
    /// Release side (free, munmap) or a freeze: detached after the allocation side, so no
    /// allocation is recorded whose free is no longer seen.
    release_side: bool,
}

enum LinkKind {
    /// aya's perf-event uprobe, at one offset.
    Probe {
        program: &'static str,
        id: UProbeLinkId,
    },
    /// A `uprobe_multi` link: one program at many offsets of one object (see attach::multi).
    Multi(OwnedFd),
}

/// The `uprobe_multi` copies of the programs.
enum MultiState {
    /// Turned off (`LEAKTRACER_NO_UPROBE_MULTI`), or unavailable on this kernel.
    Off,
    Loading(JoinHandle<Result<MultiPrograms, MultiError>>, MapFds),
    /// Loaded, with the maps to load more copies with.
    Ready(MultiPrograms, MapFds),
}

/// One attach step: a program at some sites of one object (one link with `uprobe_multi`).
struct Step<'a> {
    object: &'a ProbeObject,
    program: &'static str,
    is_return: bool,
    sites: Vec<&'a ProbeSite>,
}

/// The plan in attach order (see [`Probes::attach`]): release side, returns, entries; in each
/// phase one step per object and program, the step with `malloc` last and `malloc` last in it.
fn steps(plan: &AttachPlan) -> Vec<Step<'_>> {
    let is_malloc = |site: &ProbeSite| site.symbols.iter().any(|name| name == "malloc");
    let phases = [
        (Role::Freeze, false),
        (Role::Release, false),
        (Role::Allocate, true),
        (Role::Allocate, false),
    ];
    let mut steps = Vec::new();
    for (role, is_return) in phases {
        let mut phase: Vec<Step<'_>> = Vec::new();
        for object in &plan.objects {
            for site in object.sites.iter().filter(|s| s.role == role) {
                let program = if is_return {
                    RETURN_PROGRAM
                } else {
                    site.program
                };
                match phase
                    .iter_mut()
                    .find(|step| std::ptr::eq(step.object, object) && step.program == program)
                {
                    Some(step) => step.sites.push(site),
                    None => phase.push(Step {
                        object,
                        program,
                        is_return,
                        sites: vec![site],
                    }),
                }
            }
        }
        for step in &mut phase {
            step.sites.sort_by_key(|site| is_malloc(site));
        }
        phase.sort_by_key(|step| step.sites.iter().any(|site| is_malloc(site)));
        steps.extend(phase);
    }
    steps
}

/// The file offset probed at `site`: a release or allocating call's entry probe, and the
/// return probe sharing that address, may sit past leading instructions (see
/// attach::placement); the others at the function's entry.
fn site_offset(site: &ProbeSite) -> u64 {
    if matches!(site.role, Role::Release | Role::Allocate) {
        site.probe_offset
    } else {
        site.offset
    }
}

/// How long attaching and detaching took, for `--verbose` and the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttachStats {
    /// Every attach of the trace, summed.
    pub attach: Duration,
    /// The final detach, once done.
    pub detach: Option<Duration>,
    /// Kernel links held (at the detach: the links it closed).
    pub links: usize,
    /// Probes (offsets) they cover.
    pub probes: usize,
    /// Whether `uprobe_multi` links were used (one link per program and object).
    pub multi: bool,
    /// From leaktracer's start until the first targets' probes were in (programs loaded and
    /// verified, maps created, probes attached); set once they are.
    pub load: Option<Duration>,
    /// Where the mapping calls are traced (see attach::syscall_events).
    pub mapping_probes: crate::report::MappingProbes,
}

/// Loaded programs and their links. Dropping it detaches every probe (links are file
/// descriptors; the kernel also drops them if leaktracer dies).
pub struct Probes {
    ebpf: Ebpf,
    /// The maps userspace uses, taken out of `ebpf` at load.
    maps: EbpfMaps,
    links: Vec<Link>,
    multi: MultiState,
    stats: AttachStats,
    /// The mapping programs' tier and perf events (see attach::syscall_events).
    mapping: MappingAttachment,
    /// Set by [`Self::stop_recording`]: the detach order no longer matters.
    stopped: bool,
    /// The programs aya loaded (perf-event uprobes, raw tracepoints), with how long each took
    /// (the verifier, mostly), in load order. A uprobe program is loaded here only when a
    /// probe is attached through a perf event (no `uprobe_multi`, or the launch stop).
    loaded: Vec<(&'static str, Duration)>,
    /// Creating the maps and parsing the object (aya's load, before any program).
    pub maps_time: Duration,
    /// `uprobe_multi` copies a plan will need, loading on another thread (see
    /// [`Self::prepare`]).
    prefetch: Option<JoinHandle<Result<MultiPrograms, MultiError>>>,
    /// The launched command's stop at its entry point, while attached.
    launch_stop: Option<UProbeLinkId>,
    pub attached: Vec<AttachedProbe>,
    /// Slots of the heap record table, as sized at load.
    pub record_table_slots: u32,
    /// Slots of the unwind rows array, as sized at load.
    unwind_rows: u32,
    /// The kernel's BTF gave the `task_struct` offsets: OOM victims are marked and exit
    /// statuses recorded (see `ENDINGS`).
    pub marks_oom_victims: bool,
}

/// Fails with a clear message when this process cannot trace. CAP_SYS_ADMIN is what it takes:
/// CAP_BPF and CAP_PERFMON load the programs, but the kernel opens uprobe perf events only for
/// CAP_SYS_ADMIN (checked on 6.18 with a capability-restricted root), and CAP_SYS_ADMIN covers
/// both of them.
pub fn check_privileges() -> Result<(), TraceError> {
    if has_capability(CAP_SYS_ADMIN) {
        Ok(())
    } else {
        Err(TraceError::NotRoot("CAP_SYS_ADMIN".into()))
    }
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;

/// Why the kernel refused leaktracer another process's memory (its maps, its `map_files`), from
/// the capabilities leaktracer really has: a missing CAP_SYS_PTRACE is named only when it is
/// missing. With it, the refusal is a security policy's (as for a sandbox's init), and no
/// capability would help.
pub fn access_refusal() -> String {
    if has_capability(CAP_SYS_PTRACE) {
        "leaktracer has CAP_SYS_PTRACE, so no capability is missing: a security policy keeps this process from it (a Landlock sandbox leaktracer runs in, Yama's ptrace_scope, SELinux, AppArmor or a BPF LSM); trace it from outside that policy".to_string()
    } else {
        "leaktracer lacks CAP_SYS_PTRACE, which reading another user's process takes: run it as root with sudo".to_string()
    }
}

/// True when this process has capability `cap` in its effective set.
fn has_capability(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    effective & (1 << cap) != 0
}

/// An error with its causes, `outer: inner: ...` (thiserror's Display shows only the outer).
fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}

/// Fails with a clear message when the kernel cannot run uprobes.
pub fn check_kernel_support() -> Result<(), TraceError> {
    let pmu = Path::new("/sys/bus/event_source/devices/uprobe");
    if pmu.exists() {
        Ok(())
    } else {
        Err(TraceError::NoUprobes(pmu.to_path_buf()))
    }
}

/// One map sized by a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizedMap {
    pub map: &'static str,
    pub entries: u32,
    pub flag: &'static str,
    /// The flag's value.
    pub value: u32,
}

/// The maps whose sizes the flags set, with their entries for `sizes`.
pub fn sized_maps(sizes: &MapSizes) -> [SizedMap; 5] {
    let (table_slots, overflow_entries) =
        tracer_common::split_record_capacity(sizes.max_allocations);
    let allocations = |map, entries| SizedMap {
        map,
        entries,
        flag: "--max-allocations",
        value: sizes.max_allocations,
    };
    let stacks = |map, entries| SizedMap {
        map,
        entries,
        flag: "--max-stacks",
        value: sizes.max_stacks,
    };
    [
        allocations(maps::RECORD_TABLE, table_slots),
        allocations(maps::ALLOCS, overflow_entries),
        stacks(maps::STACKS, sizes.max_stacks),
        stacks(maps::STACK_STATS, sizes.max_stacks.saturating_mul(4)),
        SizedMap {
            map: maps::UNWIND_ROWS,
            entries: sizes.unwind_rows,
            flag: "--max-unwind-rows",
            value: sizes.unwind_rows,
        },
    ]
}

/// What the kernel maps will take at `sizes` (see [`map_memory`](super::map_memory)), before
/// any is created: the object's map definitions with the flags' sizes.
pub fn map_memory(sizes: &MapSizes) -> Result<MapMemory, TraceError> {
    if EBPF_OBJECT.is_empty() {
        return Ok(MapMemory::default());
    }
    let object = aya_obj::Object::parse(EBPF_OBJECT)
        .map_err(|e| TraceError::Load(format!("cannot read the eBPF object's maps: {e}")))?;
    let sized = sized_maps(sizes);
    let shapes: Vec<MapShape> = object
        .maps
        .iter()
        .map(|(name, map)| MapShape {
            name: name.clone(),
            kind: MapKind::from_type(map.map_type()),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: sized
                .iter()
                .find(|s| s.map == name)
                .map_or(map.max_entries(), |s| s.entries),
            flags: map.map_flags(),
        })
        .collect();
    Ok(estimate(&shapes, possible_cpus()))
}

/// Why loading failed, by its real cause: a map the kernel would not create at the size the
/// flags asked for names the flag; anything else is a kernel without what leaktracer needs.
fn load_error(err: aya::EbpfError, sizes: &MapSizes) -> TraceError {
    if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) = &err {
        let sized_by = sized_maps(sizes)
            .into_iter()
            .find(|s| s.map == name)
            .map(|s| (s.flag, s.entries));
        if let Some((flag, entries)) = sized_by {
            let reason = match io_error.raw_os_error() {
                Some(libc::E2BIG) => "more than the kernel allows in one map".to_string(),
                Some(libc::ENOMEM) => format!(
                    "{io_error} (BPF map memory is charged to this process's memory cgroup)"
                ),
                _ => io_error.to_string(),
            };
            return TraceError::MapTooLarge {
                map: name.clone(),
                entries,
                flag,
                reason,
            };
        }
    }
    TraceError::Load(format!("{err:#}"))
}

/// One program's run-time figures.
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub name: &'static str,
    pub runs: u64,
    pub ns_per_run: f64,
    pub verified_instructions: u32,
}

impl Probes {
    /// Loads (verifies) every program, with maps sized from `sizes`. Attaches nothing.
    pub fn load(sizes: MapSizes) -> Result<Self, TraceError> {
        check_privileges()?;
        check_kernel_support()?;
        if EBPF_OBJECT.is_empty() {
            return Err(TraceError::Load(
                "this binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild with `cargo xtask build`".into(),
            ));
        }
        let (cgroup_id, cgroup_level) = sizes.cgroup.unwrap_or((0, 0));
        // aya's loader reads the kernel's BTF when made (for CO-RE relocations, which this
        // object has none of), as `task_offsets` does: both at once, ~0.1 s each.
        let new_loader = std::thread::spawn(EbpfLoader::new);
        let offsets = super::btf::task_offsets();
        // Without it (no BTF), CPython targets keep native stacks.
        let fsbase_offset = offsets.fsbase.unwrap_or(0);
        // Without them, endings carry no OOM mark (the cgroup's OOM counter still tells).
        let (tgid_offset, exit_code_offset) = offsets.exit.unwrap_or((0, 0));
        // Without it, a thread killed with its process reads as ended before its process.
        let task_flags_offset = offsets.flags.unwrap_or(0);
        let (table_slots, _) = tracer_common::split_record_capacity(sizes.max_allocations);
        let mut loader = new_loader.join().unwrap_or_else(|_| EbpfLoader::new());
        for sized in sized_maps(&sizes) {
            loader.map_max_entries(sized.map, sized.entries);
        }
        let maps_started = Instant::now();
        let mut ebpf = loader
            .override_global(globals::FILTER_CGROUP_ID, &cgroup_id, true)
            .override_global(globals::FILTER_CGROUP_LEVEL, &cgroup_level, true)
            .override_global(
                globals::EMPTY_PROGRAMS,
                &u8::from(sizes.empty_programs),
                true,
            )
            .override_global(globals::SAMPLE_BYTES, &sizes.sample_bytes, true)
            .override_global(globals::RECORD_TABLE_MASK, &(table_slots - 1), true)
            .override_global(globals::MAX_DEPTH, &sizes.max_depth, true)
            .override_global(globals::FSBASE_OFFSET, &fsbase_offset, true)
            .override_global(globals::STOP_AT_EXIT, &u8::from(sizes.stop_at_exit), true)
            .override_global(globals::TGID_OFFSET, &tgid_offset, true)
            .override_global(globals::EXIT_CODE_OFFSET, &exit_code_offset, true)
            .override_global(globals::TASK_FLAGS_OFFSET, &task_flags_offset, true)
            .load(EBPF_OBJECT)
            .map_err(|e| load_error(e, &sizes))?;
        let maps_time = maps_started.elapsed();
        let multi = load_multi_copies(&ebpf);
        // The uprobe programs wait for a probe that needs them: with `uprobe_multi` their
        // copies are what runs, and aya's are never verified.
        let mut loaded = Vec::new();
        for program in programs::ALL.iter().filter(|p| {
            matches!(p.role, Role::Tracepoint(_)) && !syscall_events::is_mapping_program(p)
        }) {
            loaded.push((program.name, load_raw_tracepoint(&mut ebpf, program)?));
        }
        let mapping = syscall_events::load_and_attach(&mut ebpf, verifier_summary)?;
        loaded.extend(mapping.loaded.iter().copied());
        let mut maps = EbpfMaps::take(&mut ebpf).map_err(|e| TraceError::Load(e.to_string()))?;
        // Read by the programs only under --sample-bytes (1024 updates, one system call each).
        if sizes.sample_bytes != 0 {
            fill_sample_table(&mut maps)?;
        }
        Ok(Self {
            ebpf,
            maps,
            record_table_slots: table_slots,
            unwind_rows: sizes.unwind_rows,
            links: Vec::new(),
            multi,
            stats: AttachStats {
                mapping_probes: mapping.tier,
                ..AttachStats::default()
            },
            mapping,
            stopped: false,
            loaded,
            maps_time,
            prefetch: None,
            launch_stop: None,
            attached: Vec::new(),
            marks_oom_victims: tgid_offset != 0 && exit_code_offset != 0,
        })
    }

    /// Takes the map called `name` out of the loaded object, for the part of leaktracer that
    /// owns it (a language runtime's maps).
    pub fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.ebpf.take_map(name)
    }

    /// Freezes the picture: every program returns at once from now on. Cheaper and more
    /// immediate than detaching, which the kernel does about 0.1 s per probe.
    pub fn stop_recording(&mut self) -> Result<(), TraceError> {
        self.maps
            .stopped
            .set(0, 1, 0)
            .map_err(|e| TraceError::Load(format!("stopping the programs: {e}")))?;
        self.stopped = true;
        Ok(())
    }

    /// The first targets' probes are in, `since_start` after leaktracer started.
    pub fn set_load_time(&mut self, since_start: Duration) {
        self.stats.load.get_or_insert(since_start);
    }

    /// Why the mapping calls are traced at the machine-wide raw tracepoints, when they are.
    pub fn mapping_fallback(&self) -> Option<&str> {
        self.mapping.fallback_reason.as_deref()
    }

    /// Attach and detach figures so far.
    pub fn stats(&self) -> AttachStats {
        let mut stats = self.stats;
        if stats.detach.is_none() {
            stats.links = self.links.len();
            stats.probes = self.attached.len();
        }
        stats
    }

    /// Attaches the plan for `pid`: release side first (free, munmap), then the return probes,
    /// then the allocation entries, `malloc` last, so no allocation is recorded whose free
    /// could be missed, and a probed `malloc` means everything is in place.
    ///
    /// All or nothing: when one probe cannot be attached (the process exec'd or exited
    /// meanwhile), the ones attached by this call are detached again.
    ///
    /// With `uprobe_multi` (kernel 6.6+) each step is one link for all its offsets; when the
    /// kernel refuses the very first such link, every attach from then on is per probe.
    pub fn attach(&mut self, plan: &AttachPlan, pid: u32) -> Result<(), TraceError> {
        let started = Instant::now();
        let use_multi = self.multi_ready();
        let mut result = self.attach_or_roll_back(plan, pid, use_multi);
        if use_multi
            && !self.stats.multi
            && let Err(e @ TraceError::Attach { .. }) = &result
        {
            eprintln_escaped!(
                "leaktracer: note: {e}; attaching one perf event per probe instead (detaching those takes the kernel about 0.1 s per probe)"
            );
            self.multi = MultiState::Off;
            result = self.attach_or_roll_back(plan, pid, false);
        }
        self.stats.attach += started.elapsed();
        result
    }

    /// Whether the `uprobe_multi` copies are loaded (waiting for their load the first time).
    fn multi_ready(&mut self) -> bool {
        if let MultiState::Loading(..) = self.multi {
            let MultiState::Loading(handle, maps) =
                std::mem::replace(&mut self.multi, MultiState::Off)
            else {
                unreachable!("matched above")
            };
            match multi::join(handle) {
                Ok(programs) => self.multi = MultiState::Ready(programs, maps),
                Err(e) => eprintln_escaped!(
                    "leaktracer: note: no uprobe_multi links ({e}); attaching one perf event per probe (detaching those takes the kernel about 0.1 s per probe)"
                ),
            }
        }
        matches!(self.multi, MultiState::Ready(..))
    }

    /// Starts loading, on another thread, the `uprobe_multi` copies of the programs `plan`
    /// needs that are not loaded up front (pymalloc's, for a CPython process), while the
    /// caller prepares the rest (unwind tables, the interpreter): its attach finds them ready.
    pub fn prepare(&mut self, plan: &AttachPlan) {
        let maps = match &self.multi {
            MultiState::Loading(_, maps) | MultiState::Ready(_, maps) => maps.clone(),
            MultiState::Off => return,
        };
        let mut names: Vec<&'static str> = steps(plan)
            .iter()
            .map(|step| step.program)
            .filter(|name| programs::by_name(name).is_some_and(|p| !programs::loaded_up_front(p)))
            .collect();
        names.sort_unstable();
        names.dedup();
        if !names.is_empty() && self.prefetch.is_none() {
            self.prefetch = Some(multi::load_in_background(EBPF_OBJECT, maps, names));
        }
    }

    /// Loads the programs `names` that are not loaded yet, for attaching them: their
    /// `uprobe_multi` copies with `multi`, else aya's (perf-event) programs.
    fn ensure_loaded(&mut self, names: &[&'static str], multi: bool) -> Result<(), TraceError> {
        if multi {
            let MultiState::Ready(programs, maps) = &mut self.multi else {
                unreachable!("only called with the copies loaded")
            };
            // A failed prefetch is only a lost head start: what is missing loads below.
            if let Some(Ok(more)) = self.prefetch.take().map(multi::join) {
                programs.merge(more);
            }
            return programs
                .load_more(EBPF_OBJECT, maps, names)
                .map_err(|e| TraceError::Load(with_causes(&e)));
        }
        for &name in names {
            if self.loaded.iter().any(|(loaded, _)| *loaded == name) {
                continue;
            }
            let started = Instant::now();
            let uprobe: &mut UProbe = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| TraceError::Load(format!("program {name} missing from the object")))?
                .try_into()
                .map_err(|e| TraceError::Load(format!("{name}: {e}")))?;
            uprobe
                .load()
                .map_err(|e| TraceError::Load(format!("{name}: {}", verifier_summary(&e))))?;
            self.loaded.push((name, started.elapsed()));
        }
        Ok(())
    }

    /// Every program loaded so far (verified by the kernel), in the object's table order.
    pub fn loaded_programs(&self) -> Vec<&'static str> {
        programs::ALL
            .iter()
            .map(|program| program.name)
            .filter(|name| {
                self.loaded.iter().any(|(loaded, _)| loaded == name)
                    || matches!(&self.multi, MultiState::Ready(copies, _) if copies.has(name))
            })
            .collect()
    }

    /// How long each program took to load, in load order: aya's, then the `uprobe_multi`
    /// copies (loaded on another thread, meanwhile).
    pub fn load_times(&self) -> Vec<(&'static str, Duration)> {
        let mut times = self.loaded.clone();
        if let MultiState::Ready(copies, _) = &self.multi {
            times.extend(copies.load_times.iter().copied());
        }
        times
    }

    fn attach_or_roll_back(
        &mut self,
        plan: &AttachPlan,
        pid: u32,
        use_multi: bool,
    ) -> Result<(), TraceError> {
        let before = (self.links.len(), self.attached.len());
        let pid = NonZeroU32::new(pid).expect("pid is never 0");
        let mut needed: Vec<&'static str> = steps(plan).iter().map(|step| step.program).collect();
        needed.sort_unstable();
        needed.dedup();
        self.ensure_loaded(&needed, use_multi)?;
        let mut result = Ok(());
        for step in steps(plan) {
            result = if use_multi {
                self.attach_step(&step, pid)
            } else {
                step.sites.iter().try_for_each(|site| {
                    self.attach_one(step.object, step.program, site, pid, step.is_return)
                })
            };
            if result.is_err() {
                break;
            }
        }
        if result.is_err() {
            self.detach_from(before);
        }
        result
    }

    /// One `uprobe_multi` link for the step.
    fn attach_step(&mut self, step: &Step<'_>, pid: NonZeroU32) -> Result<(), TraceError> {
        let MultiState::Ready(programs, _) = &self.multi else {
            unreachable!("only called with the copies loaded")
        };
        let offsets: Vec<u64> = step.sites.iter().map(|site| site_offset(site)).collect();
        let fd = programs
            .attach(
                step.program,
                &step.object.open_path,
                &offsets,
                pid.get(),
                step.is_return,
            )
            .map_err(|e| {
                if !crate::target::process::is_alive(pid.get()) {
                    TraceError::ExitedDuringAttach(pid.get())
                } else {
                    TraceError::Attach {
                        program: step.program.to_string(),
                        path: step.object.open_path.clone(),
                        offset: offsets[0],
                        reason: format!("uprobe_multi link at {} offsets: {e}", offsets.len()),
                    }
                }
            })?;
        self.stats.multi = true;
        self.links.push(Link {
            kind: LinkKind::Multi(fd),
            release_side: !step.is_return
                && step
                    .sites
                    .iter()
                    .any(|site| matches!(site.role, Role::Release | Role::Freeze)),
        });
        for (site, offset) in step.sites.iter().zip(offsets) {
            self.attached.push(AttachedProbe {
                pid: pid.get(),
                object: step.object.display_path.clone(),
                symbols: site.symbols.clone(),
                offset,
                skipped: site.skipped.clone(),
                program: step.program,
                is_return: step.is_return,
            });
        }
        Ok(())
    }

    fn attach_one(
        &mut self,
        object: &ProbeObject,
        program: &'static str,
        site: &ProbeSite,
        pid: NonZeroU32,
        is_return: bool,
    ) -> Result<(), TraceError> {
        let uprobe: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .expect("program loaded")
            .try_into()
            .expect("program is a uprobe");
        let offset = site_offset(site);
        let link = uprobe
            .attach(offset, &object.open_path, UProbeScope::OneProcess(pid))
            .map_err(|e| {
                if !crate::target::process::is_alive(pid.get()) {
                    TraceError::ExitedDuringAttach(pid.get())
                } else {
                    TraceError::Attach {
                        program: program.to_string(),
                        path: object.open_path.clone(),
                        offset,
                        reason: with_causes(&e),
                    }
                }
            })?;
        self.links.push(Link {
            kind: LinkKind::Probe { program, id: link },
            release_side: matches!(site.role, Role::Release | Role::Freeze) && !is_return,
        });
        self.attached.push(AttachedProbe {
            pid: pid.get(),
            object: object.display_path.clone(),
            symbols: site.symbols.clone(),
            offset,
            skipped: site.skipped.clone(),
            program,
            is_return,
        });
        Ok(())
    }

    /// Makes `pid` stop (SIGSTOP) when it reaches the entry point of `executable`, the program
    /// it is about to exec: its libraries are mapped then and none of its code has run.
    pub fn attach_launch_stop(&mut self, executable: &Path, pid: u32) -> Result<(), TraceError> {
        let offset = super::elf::entry_offset(executable).map_err(|e| TraceError::Attach {
            program: programs::LAUNCH_ENTRY.name.to_string(),
            path: executable.to_path_buf(),
            offset: 0,
            reason: e.to_string(),
        })?;
        let pid = NonZeroU32::new(pid).expect("a child's pid is not 0");
        self.ensure_loaded(&[programs::LAUNCH_ENTRY.name], false)?;
        let uprobe: &mut UProbe = self
            .ebpf
            .program_mut(programs::LAUNCH_ENTRY.name)
            .expect("program loaded")
            .try_into()
            .expect("program is a uprobe");
        let link = uprobe
            .attach(offset, executable, UProbeScope::OneProcess(pid))
            .map_err(|e| TraceError::Attach {
                program: programs::LAUNCH_ENTRY.name.to_string(),
                path: executable.to_path_buf(),
                offset,
                reason: with_causes(&e),
            })?;
        self.launch_stop = Some(link);
        Ok(())
    }

    /// Counts `pid`'s mapping system calls from now on (the syscall tracepoints see every
    /// process; only these count).
    pub fn trace_process(&mut self, pid: u32) -> Result<(), TraceError> {
        self.maps
            .traced
            .insert(pid, 1, 0)
            .map_err(|e| TraceError::Load(format!("tracing the system calls of pid {pid}: {e}")))
    }

    /// Stops counting `pid`'s mapping system calls (it exited: its pid may be reused).
    pub fn untrace_process(&mut self, pid: u32) {
        let _ = self.maps.traced.remove(&pid);
    }

    /// Makes `pid` stop (SIGSTOP) at each of its execs, before the new image runs (see
    /// [`Self::attach_launch_stop`] for what follows). Best effort: without it the new image's
    /// first allocations are walked by frame pointers. True when armed.
    pub fn stop_at_exec(&mut self, pid: u32) -> bool {
        self.maps.stop_at_exec.insert(pid, 1, 0).is_ok()
    }

    /// Removes the launch stop (before the stopped command resumes: a later exec of the same
    /// program must not stop again).
    pub fn detach_launch_stop(&mut self) {
        if let Some(link) = self.launch_stop.take()
            && let Some(Ok(uprobe)) = self
                .ebpf
                .program_mut(programs::LAUNCH_ENTRY.name)
                .map(<&mut UProbe>::try_from)
        {
            let _ = uprobe.detach(link);
        }
    }

    /// Detaches every probe; the maps stay readable. Its time goes into [`Self::stats`]; a
    /// second call does nothing.
    pub fn detach(&mut self) {
        self.detach_launch_stop();
        if self.stats.detach.is_some() {
            return;
        }
        let (links, probes) = (self.links.len(), self.attached.len());
        let took = self.detach_from((0, 0));
        self.stats.detach = Some(took);
        self.stats.links = links;
        self.stats.probes = probes;
    }

    /// Detaches the links and forgets the probes from `first` (links, probes) on, in parallel
    /// (the kernel waits for an RCU grace period per uprobe link). While the programs still
    /// record, the allocation side goes first, then the release side.
    fn detach_from(&mut self, first: (usize, usize)) -> Duration {
        self.attached.truncate(first.1);
        let mut allocation_side: Vec<Box<dyn Send>> = Vec::new();
        let mut release_side: Vec<Box<dyn Send>> = Vec::new();
        for link in self.links.drain(first.0..) {
            let owned: Box<dyn Send> = match link.kind {
                LinkKind::Multi(fd) => Box::new(fd),
                LinkKind::Probe { program, id } => {
                    let Some(Ok(uprobe)) =
                        self.ebpf.program_mut(program).map(<&mut UProbe>::try_from)
                    else {
                        continue;
                    };
                    let Ok(owned) = uprobe.take_link(id) else {
                        continue;
                    };
                    Box::new(owned)
                }
            };
            if link.release_side && !self.stopped {
                release_side.push(owned);
            } else {
                allocation_side.push(owned);
            }
        }
        drop_in_parallel(allocation_side) + drop_in_parallel(release_side)
    }

    /// Run-time figures of every program, as the kernel measures them while its BPF statistics
    /// are on (see `aya::sys::enable_stats`); programs never run are left out.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let mut all = Vec::new();
        for name in programs::ALL.map(|program| program.name) {
            // Loaded by aya, its uprobe_multi copy, or both.
            let (mut runs, mut run_ns, mut verified) = match self
                .ebpf
                .program(name)
                .and_then(|program| program.info().ok())
            {
                Some(info) => (
                    info.run_count(),
                    info.run_time().as_nanos() as u64,
                    info.verified_instruction_count().unwrap_or(0),
                ),
                None => (0, 0, 0),
            };
            // Its uprobe_multi copy runs instead where those links are used.
            if let MultiState::Ready(copies, _) = &self.multi
                && let Some(Ok((copy_runs, copy_ns, copy_verified))) =
                    copies.program(name).map(bpf_sys::prog_run_figures)
            {
                runs += copy_runs;
                run_ns += copy_ns;
                verified = verified.max(copy_verified);
            }
            if runs == 0 {
                continue;
            }
            all.push(ProgramStats {
                name,
                runs,
                ns_per_run: run_ns as f64 / runs as f64,
                verified_instructions: verified,
            });
        }
        all
    }

    /// The collector of what these programs record: their record table mapped.
    pub fn collector(&mut self) -> anyhow::Result<crate::collect::Collector> {
        crate::collect::Collector::new(&mut self.ebpf, &self.maps, self.record_table_slots)
    }

    /// The unwinder's maps, taken out of the object (once: a second call fails).
    pub fn unwind_maps(&mut self) -> anyhow::Result<crate::unwind::in_maps::UnwindMaps> {
        fn take<M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut Ebpf,
            name: &str,
        ) -> anyhow::Result<M> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| anyhow::anyhow!("map {name} missing from the eBPF object"))?;
            M::try_from(map).map_err(|e| anyhow::anyhow!("map {name}: {e}"))
        }
        Ok(crate::unwind::in_maps::UnwindMaps {
            rows: take(&mut self.ebpf, maps::UNWIND_ROWS)?,
            row_slots: self.unwind_rows,
            mappings: take(&mut self.ebpf, maps::UNWIND_MAPPINGS)?,
            mapping_slots: tracer_common::unwind::UNWIND_MAPPING_SLOTS,
            processes: take(&mut self.ebpf, maps::UNWIND_PROCESSES)?,
            ends: take(&mut self.ebpf, maps::UNWIND_ENDS)?,
        })
    }

    /// The maps userspace reads and writes.
    pub fn maps(&self) -> &EbpfMaps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut EbpfMaps {
        &mut self.maps
    }
}

/// Starts loading the `uprobe_multi` copies of the probe programs (see attach::multi), unless
/// turned off.
fn load_multi_copies(ebpf: &Ebpf) -> MultiState {
    if multi::disabled() {
        return MultiState::Off;
    }
    // The others are loaded when a target first needs them (see `Probes::ensure_loaded`).
    let names: Vec<&'static str> = programs::ALL
        .iter()
        .filter(|p| {
            matches!(p.role, Role::Allocate | Role::Release | Role::Return)
                && programs::loaded_up_front(p)
        })
        .map(|p| p.name)
        .collect();
    match multi::map_fds(ebpf) {
        Ok(maps) => MultiState::Loading(
            multi::load_in_background(EBPF_OBJECT, maps.clone(), names),
            maps,
        ),
        Err(e) => {
            eprintln_escaped!(
                "leaktracer: note: no uprobe_multi links (duplicating the map fds: {e})"
            );
            MultiState::Off
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Slot k: the probability, scaled to 2^32, of sampling an allocation of (k + 0.5) / slots of
/// the sampling period: 1 - exp(-(k + 0.5) / slots). The kernel samples with it and scales by its
/// inverse, so the quantization costs variance, not bias.
fn fill_sample_table(maps: &mut EbpfMaps) -> Result<(), TraceError> {
    let table = &mut maps.sample_table;
    for slot in 0..SAMPLE_TABLE_SLOTS {
        let fraction = (f64::from(slot) + 0.5) / f64::from(SAMPLE_TABLE_SLOTS);
        let probability = 1.0 - (-fraction).exp();
        let scaled = (probability * 4_294_967_296.0).clamp(1.0, 4_294_967_295.0) as u32;
        table
            .set(slot, scaled, 0)
            .map_err(|e| TraceError::Load(format!("filling the sampling table: {e}")))?;
    }
    Ok(())
}

/// Loads the raw tracepoint program `program` and attaches it, at once and machine-wide (each
/// program returns at once for a process not traced, so no event of a target is missed,
/// however early); returns how long the load took (the verifier, mostly).
pub(super) fn load_raw_tracepoint(
    ebpf: &mut Ebpf,
    program: &programs::Program,
) -> Result<Duration, TraceError> {
    let (name, Role::Tracepoint(tracepoint)) = (program.name, program.role) else {
        return Err(TraceError::Load(format!(
            "{} is no raw tracepoint",
            program.name
        )));
    };
    let started = Instant::now();
    let raw: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| TraceError::Load(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|e| TraceError::Load(format!("{name}: {e}")))?;
    raw.load()
        .and_then(|()| raw.attach(tracepoint).map(drop))
        .map_err(|e| TraceError::Load(format!("{name}: {}", verifier_summary(&e))))?;
    Ok(started.elapsed())
}

/// The verifier's log is long; its last lines say why.
/// The verifier's last lines (its verdict); all of them with `LEAKTRACER_VERIFIER_LOG` set in
/// the environment, for whoever changes the programs.
fn verifier_summary(error: &aya::programs::ProgramError) -> String {
    let text = format!("{error:#}");
    let lines: Vec<&str> = text.lines().collect();
    let tail = if std::env::var_os("LEAKTRACER_VERIFIER_LOG").is_some() {
        0
    } else {
        lines.len().saturating_sub(3)
    };
    lines[tail..].join(" / ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

    use super::*;

    /// What aya-log adds to the object: its map and its level global.
    const LOG_MAP: &str = "AYA_LOGS";
    const LOG_LEVEL: &str = "AYA_LOG_LEVEL";

    /// The embedded object's global symbols: (programs with their section, maps, globals).
    fn object_symbols() -> (
        BTreeSet<(String, String)>,
        BTreeSet<String>,
        BTreeSet<String>,
    ) {
        let file = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object parses");
        let (mut programs, mut maps, mut globals) = Default::default();
        for symbol in file
            .symbols()
            .filter(|s| s.is_global() && s.is_definition())
        {
            let Some(section) = symbol
                .section_index()
                .and_then(|i| file.section_by_index(i).ok())
            else {
                continue;
            };
            let section = section.name().unwrap().to_string();
            let name = symbol.name().unwrap().to_string();
            match symbol.kind() {
                SymbolKind::Text
                    if section.starts_with("uprobe")
                        || section.starts_with("uret")
                        || section.starts_with("raw_tp")
                        || section == "tracepoint" =>
                {
                    BTreeSet::insert(&mut programs, (name, section));
                }
                SymbolKind::Data if section == "maps" => {
                    BTreeSet::insert(&mut maps, name);
                }
                SymbolKind::Data => {
                    BTreeSet::insert(&mut globals, name);
                }
                _ => {}
            }
        }
        (programs, maps, globals)
    }

    /// The program, map and global tables of tracer-common against the object itself, both
    /// ways (no kernel needed: the ELF is parsed).
    #[test]
    fn the_tables_match_the_embedded_object() {
        if EBPF_OBJECT.is_empty() {
            assert!(
                option_env!("AYA_BUILD_SKIP").is_some(),
                "the eBPF object is missing although AYA_BUILD_SKIP is not set"
            );
            return;
        }
        let (programs, maps, globals) = object_symbols();
        let expected_programs: BTreeSet<(String, String)> = programs::ALL
            .iter()
            .map(|p| {
                let section = match p.role {
                    Role::Return => "uretprobe".to_string(),
                    Role::Tracepoint(tracepoint) => format!("raw_tp/{tracepoint}"),
                    Role::SyscallEvent(_) => "tracepoint".to_string(),
                    Role::Allocate | Role::Release | Role::Launch | Role::Freeze => {
                        "uprobe".to_string()
                    }
                };
                (p.name.to_string(), section)
            })
            .collect();
        assert_eq!(programs, expected_programs, "programs (name, section)");
        let expected_maps: BTreeSet<String> = maps::ALL
            .iter()
            .chain([&LOG_MAP])
            .map(|m| m.to_string())
            .collect();
        assert_eq!(maps, expected_maps, "maps");
        let expected_globals: BTreeSet<String> = globals::ALL
            .iter()
            .chain([&LOG_LEVEL])
            .map(|g| g.to_string())
            .collect();
        assert_eq!(globals, expected_globals, "globals");
    }
}
