//! The command line as clap parses it: flags and their help. [`super::config`] turns these
//! into the validated configurations the rest of leaktracer runs on.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    report::plumbing::Pattern,
    units::{parse_bytes, parse_duration},
};

/// Which leading frames of a stack are folded as allocator plumbing.
#[derive(Debug, Args)]
pub struct PlumbingArgs {
    /// Fold this function too, as allocator plumbing, when it leads a stack: a name as the
    /// report shows it (a C++ name with or without its parameters), or a prefix when it ends in
    /// `*`. Repeatable. Built in: malloc wrappers (zmalloc, g_malloc, xmalloc, CRYPTO_malloc,
    /// strdup...), C++ operator new and std::, Rust's alloc/core/std. Folded frames are left out
    /// of the text report (which says how many), the flamegraph, the folded stacks and the
    /// summaries, so the first frame shown is your own code; the JSON keeps them, marked
    /// `"plumbing": true`. E.g. --plumbing 'my_alloc*' --plumbing pool_get
    #[arg(long = "plumbing", value_name = "NAME")]
    pub plumbing: Vec<Pattern>,

    /// Fold no frame: show every stack from frame 0, the allocator's own caller (wrappers and
    /// library frames included), and mark none in the JSON. E.g. to see which wrapper allocated.
    #[arg(long, conflicts_with = "plumbing")]
    pub keep_plumbing: bool,
}

/// Where a report goes, besides the text on stdout.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Show this many stacks in the text report.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Write a leak flamegraph (SVG): width is outstanding bytes.
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<PathBuf>,

    /// Write folded stacks (`root;...;leaf bytes`), for flamegraph.pl, inferno or speedscope.
    /// Any output may be `-` for stdout (one of them; the text report then goes to stderr).
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,

    /// Write one self-contained HTML page: the verdict, a chart of outstanding bytes and RSS over
    /// time with the top growers, the flamegraph and the top stacks.
    #[arg(long, value_name = "FILE.html")]
    pub html: Option<PathBuf>,

    /// Write the outstanding allocations as a gzipped pprof profile (profile.proto, sample
    /// types inuse_objects/count and inuse_space/bytes), for `go tool pprof`, Pyroscope, Parca.
    #[arg(long, value_name = "FILE.pb.gz")]
    pub pprof: Option<PathBuf>,

    #[command(flatten)]
    pub plumbing: PlumbingArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "command", "cgroup", "container"])))]
pub struct TraceArgs {
    /// Attach to this running process (all its threads). Allocations made before attach are
    /// not known and their frees are ignored.
    #[arg(short, long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Trace every process in this cgroup v2 directory and its descendants, including processes
    /// that start while tracing (attached within a second). On a hybrid host the directory is
    /// under the cgroup2 mount, e.g. /sys/fs/cgroup/unified/...
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Trace a container: its cgroup is found from the container id (a unique prefix is enough)
    /// in the cgroups of running processes (docker, containerd, CRI-O, podman).
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,

    /// With --pid or a command: also trace the processes it forks (and what they exec), e.g. the
    /// workers of a pre-fork server.
    #[arg(long)]
    pub follow_children: bool,

    /// The object that serves malloc, as the target sees its path, and optionally the prefix of
    /// its function names (e.g. `/opt/app/bin/server:je_`). By default it is found: the
    /// executable, an LD_PRELOADed allocator, or the C library.
    #[arg(long, value_name = "PATH[:PREFIX]")]
    pub allocator: Option<crate::attach::allocator::AllocatorOverride>,

    /// Stop after this long (e.g. 30s, 10m, 1h). Without it, trace until Ctrl-C or the target exits.
    #[arg(short, long, value_name = "DUR", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub output: OutputArgs,

    /// Write the full recording as JSON: totals, timeline, verdict, every outstanding stack with
    /// its frames, growth and samples. `leaktracer report` and `diff` read it. Outputs are
    /// checked before the trace starts: regular files only (never a device, FIFO, directory or
    /// link), in a directory that takes a new file, none named twice.
    #[arg(long, value_name = "FILE.json")]
    pub json: Option<PathBuf>,

    /// Every interval, sample per-stack outstanding bytes and the RSS, and print a status line
    /// (elapsed, outstanding, growth rate, top grower). The growth analysis works on these
    /// samples. Default: 5s, or with --duration a tenth of it between 1s and 5s, so a short
    /// trace still takes enough samples for a verdict.
    #[arg(short, long, value_name = "DUR", value_parser = parse_duration)]
    pub interval: Option<Duration>,

    /// While tracing, serve HTTP on ADDR: Prometheus metrics (/metrics), the report as JSON
    /// (/api/snapshot), the timeline (/api/history), the leaking stacks (/api/leaks), the
    /// processes (/api/process), the current flamegraph (/flamegraph.svg) and a live dashboard
    /// (/). A bare PORT (or :PORT) binds 127.0.0.1; HOST:PORT binds that address, with a
    /// warning unless it is loopback. Refreshed every --interval. Requests whose Host is a DNS
    /// name are refused (DNS rebinding). With --reachability, POST /api/reachability scans
    /// now, at most once per --max-pause x 10.
    #[arg(long, value_name = "ADDR", value_parser = crate::serve::parse_addr)]
    pub serve: Option<std::net::SocketAddr>,

    /// Stacks with their own series in /metrics: the top N by outstanding bytes (bounds the
    /// label cardinality).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub metrics_stacks: usize,

    /// Count only allocations older than this (ignores the in-flight memory of a busy server).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub min_age: Option<Duration>,

    /// Growth below this many bytes per second is flat: churn or plateau, never a leak.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, default_value = "128")]
    pub min_rate: f64,

    /// A leak grows (or holds) in at least this share of intervals.
    #[arg(long, value_name = "RATIO", default_value_t = 0.8)]
    pub steady_ratio: f64,

    /// A leak's growth over the second half of the trace is at least this fraction of its growth
    /// over the first half; slower is `growing`.
    #[arg(long, value_name = "RATIO", default_value_t = 0.5)]
    pub slowdown_ratio: f64,

    /// Growth rates (bytes/s) from which a leak's severity is medium, high and critical; below the
    /// first it is low.
    #[arg(long, value_name = "MED,HIGH,CRIT", value_parser = parse_severity_rates, default_value = "10K,100K,1M")]
    pub severity_rates: [f64; 3],

    /// Sample heap allocations: record on average one per N bytes (an allocation of s bytes with
    /// probability 1 - exp(-s/N), from N bytes up always) and scale each sampled one back, so
    /// totals are unbiased estimates. Cheaper on allocation-heavy targets. `--sample-bytes`
    /// alone: 512K.
    #[arg(long, value_name = "N", value_parser = parse_bytes, num_args = 0..=1, default_missing_value = "512K")]
    pub sample_bytes: Option<f64>,

    /// Outstanding heap allocations tracked beyond the record table (262144 slots, each record
    /// within 8 slots of its home); beyond both, allocations are counted as dropped
    /// (alloc_map_full).
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    pub max_allocations: u32,

    /// Most distinct allocation stacks; beyond it, allocations are kept without a stack
    /// (stack_failed). Python code makes many (one per line and caller), and a launched
    /// interpreter's imports alone can make ten thousand.
    #[arg(long, value_name = "N", default_value_t = 65536)]
    pub max_stacks: u32,

    /// How stacks are walked: `cfi` follows each object's call-frame information (`.eh_frame`,
    /// which every binary ships for exceptions), so code built without frame pointers (Debian
    /// packages, Rust release builds, C at -O2) gets its whole stack; `fp` only follows frame
    /// pointers (cheaper; exact only for code built with -fno-omit-frame-pointer).
    #[arg(long, value_name = "HOW", value_parser = ["cfi", "fp"], default_value = "cfi")]
    pub unwind: String,

    /// Frames kept per stack, frame 0 included (1 to 127); a deeper stack is cut there and
    /// counted (depth_limit).
    #[arg(long, value_name = "N", default_value_t = tracer_common::unwind::DEFAULT_MAX_DEPTH)]
    pub max_depth: u32,

    /// Room for unwind rows (16 bytes of kernel memory each), for every traced object
    /// together: libc needs about 27000, a large Rust binary 500000. An object that finds no
    /// room ends its stacks where they enter it (with a warning).
    #[arg(long, value_name = "N", default_value_t = tracer_common::unwind::DEFAULT_UNWIND_ROWS)]
    pub max_unwind_rows: u32,

    /// Create the kernel maps even when, full, they would take more than a quarter of this
    /// machine's memory (MemTotal). Without it such sizes (--max-stacks, --max-allocations,
    /// --max-unwind-rows) are refused before anything starts, with what they would take;
    /// --verbose says it for every trace.
    #[arg(long)]
    pub allow_large_maps: bool,

    /// For benchmarks: attach every probe as usual, but make the programs return at once (the
    /// bare cost of the probes). Reports nothing.
    #[arg(long, hide = true)]
    pub empty_programs: bool,

    /// For benchmarks: probe every function at its symbol's entry, the usual placement, rather
    /// than past instructions the kernel would single-step.
    #[arg(long, hide = true)]
    pub probes_at_symbol_entry: bool,

    /// At the end of the trace (a launched command: where it calls exit(), before its teardown;
    /// and on `POST /api/reachability` with --serve), tell a true leak from memory still
    /// referenced: stop the target briefly with ptrace (no signal is sent, and
    /// it goes on if leaktracer dies), scan its registers, stacks and writable memory for
    /// pointers to every outstanding block, resume it, and class each stack's bytes as valgrind
    /// does: definitely lost (no pointer left), indirectly lost (only lost blocks point to it),
    /// possibly lost (only pointers into its middle), still reachable. A growing stack whose
    /// bytes are all still reachable is a cache or store to bound, not a leak. Exact for glibc's
    /// malloc; other allocators get a conservative verdict (said in the report). Not for
    /// Python targets, whose objects are reachable by design.
    #[arg(long)]
    pub reachability: bool,

    /// With --reachability: the longest the target may stay stopped. Past it the target is
    /// resumed and the scan reported incomplete. Reading memory takes about 1 s per GiB.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "200ms")]
    pub max_pause: Duration,

    /// With --reachability: which pointers past a block's header count as pointing at its
    /// start, when the header has the shape (memcheck's heuristics, same names): length64,
    /// newarray, stdstring, and sds (Redis and other sds users point at a string's characters,
    /// past its 1-17 byte header). `all`, `none` (memcheck's --leak-check-heuristics=none), or
    /// a list: e.g. --reachability-heuristics sds,length64.
    #[arg(long, value_name = "LIST", default_value = "all")]
    pub reachability_heuristics: crate::reach::heuristics::HeuristicSet,

    /// Measure the eBPF programs themselves (the kernel's BPF run-time statistics, which cost
    /// some 20-40 ns per call while on) and print, per program, its runs, its mean run time
    /// and the instructions the verifier checked.
    #[arg(long)]
    pub program_stats: bool,

    /// No live status line.
    #[arg(short, long)]
    pub quiet: bool,

    /// Print where each probe was placed, and progress.
    #[arg(short, long)]
    pub verbose: bool,

    /// Launch this command (with its arguments) and trace it from its first allocation. When the
    /// trace ends first, the command is stopped with SIGTERM; it never outlives leaktracer.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_severity_rates(text: &str) -> Result<[f64; 3], String> {
    let rates = text
        .split(',')
        .map(parse_bytes)
        .collect::<Result<Vec<_>, _>>()?;
    match rates[..] {
        [medium, high, critical] if medium <= high && high <= critical => {
            Ok([medium, high, critical])
        }
        _ => Err(format!(
            "`{text}` must be three increasing rates, e.g. 10K,100K,1M"
        )),
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A recording written by `leaktracer trace --json`.
    #[arg(value_name = "FILE.json")]
    pub recording: PathBuf,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier recording.
    #[arg(value_name = "OLD.json")]
    pub old: PathBuf,

    /// The later recording.
    #[arg(value_name = "NEW.json")]
    pub new: PathBuf,

    /// Show this many stacks.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Write a differential flamegraph (SVG): widths from NEW, red where bytes grew since OLD,
    /// blue where they shrank.
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<PathBuf>,

    #[command(flatten)]
    pub plumbing: PlumbingArgs,
}
