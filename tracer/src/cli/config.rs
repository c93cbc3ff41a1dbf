//! From what clap parsed to the validated configurations the subcommands run on: contradictory
//! flags are rejected here, with a message that says what to do instead.

use std::{path::PathBuf, time::Duration};

use super::args::{DiffArgs, OutputArgs, PlumbingArgs, TraceArgs};
use crate::{
    growth::Thresholds,
    report::{Outputs, diff::DiffOptions, plumbing::Plumbing},
    trace::{TargetSpec, TraceConfig, UnwindMode},
};

/// A combination of flags that cannot be honoured.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "--follow-children goes with --pid or a command: --cgroup and --container already trace every process in the cgroup, children included"
    )]
    FollowChildrenWithCgroup,
    #[error("{flag} {value}: must be a number from 0 to 1 ({meaning})")]
    NotARatio {
        flag: &'static str,
        value: f64,
        meaning: &'static str,
    },
    #[error(
        "--sample-bytes {0}: must be at least 1 byte (leave the flag out to record every allocation)"
    )]
    SampleBytesTooSmall(f64),
    #[error(
        "--reachability needs every allocation recorded: leave out --sample-bytes (a sampled block's neighbours would be unknown memory)"
    )]
    ReachabilityWithSampling,
    #[error("--max-pause must be more than 0 (the target is stopped for the scan)")]
    NoPause,
    #[error("--max-stacks 0: the kernel must keep at least one stack")]
    NoStacks,
    #[error("--max-depth {0}: must be from 1 to {max} frames", max = tracer_common::MAX_STACK_DEPTH)]
    MaxDepth(u32),
    #[error("--max-unwind-rows 0: leave the unwinder room, or trace with --unwind fp")]
    NoUnwindRows,
}

/// Checks a share given on the command line: finite and within 0..=1.
fn ratio(flag: &'static str, value: f64, meaning: &'static str) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::NotARatio {
            flag,
            value,
            meaning,
        })
    }
}

impl PlumbingArgs {
    /// What is folded (clap refuses `--keep-plumbing` with `--plumbing`).
    pub fn plumbing(&self) -> Plumbing {
        if self.keep_plumbing {
            Plumbing::keep_all()
        } else {
            Plumbing::new(self.plumbing.clone())
        }
    }
}

impl OutputArgs {
    /// The outputs, with `json` added (a trace writes the recording itself).
    pub fn outputs(&self, json: Option<PathBuf>) -> Outputs {
        Outputs {
            json,
            folded: self.folded.clone(),
            flamegraph: self.flamegraph.clone(),
            html: self.html.clone(),
            pprof: self.pprof.clone(),
            top: self.top,
            plumbing: self.plumbing.plumbing(),
        }
    }
}

impl DiffArgs {
    /// What `diff` shows and writes.
    pub fn options(&self) -> DiffOptions {
        DiffOptions {
            top: self.top,
            flamegraph: self.flamegraph.clone(),
            plumbing: self.plumbing.plumbing(),
        }
    }
}

impl TryFrom<TraceArgs> for TraceConfig {
    type Error = ConfigError;

    fn try_from(args: TraceArgs) -> Result<Self, ConfigError> {
        // clap's "target" group makes these exclusive and requires one.
        let target = match (args.pid, args.cgroup, args.container) {
            (Some(pid), _, _) => TargetSpec::Pid(pid),
            (None, Some(dir), _) => TargetSpec::Cgroup(dir),
            (None, None, Some(id)) => TargetSpec::Container(id),
            (None, None, None) => TargetSpec::Launch(args.command),
        };
        if args.follow_children
            && matches!(target, TargetSpec::Cgroup(_) | TargetSpec::Container(_))
        {
            return Err(ConfigError::FollowChildrenWithCgroup);
        }
        let sample_bytes = match args.sample_bytes {
            Some(n) if n < 1.0 => return Err(ConfigError::SampleBytesTooSmall(n)),
            Some(n) => Some(n as u64),
            None => None,
        };
        if args.reachability && sample_bytes.is_some() {
            return Err(ConfigError::ReachabilityWithSampling);
        }
        if args.max_pause.is_zero() {
            return Err(ConfigError::NoPause);
        }
        if args.max_stacks == 0 {
            return Err(ConfigError::NoStacks);
        }
        if !(1..=tracer_common::MAX_STACK_DEPTH as u32).contains(&args.max_depth) {
            return Err(ConfigError::MaxDepth(args.max_depth));
        }
        let unwind = match args.unwind.as_str() {
            "fp" => UnwindMode::FramePointers,
            _ => UnwindMode::Cfi,
        };
        if args.max_unwind_rows == 0 && unwind == UnwindMode::Cfi {
            return Err(ConfigError::NoUnwindRows);
        }
        Ok(TraceConfig {
            target,
            follow_children: args.follow_children,
            allocator: args.allocator,
            duration: args.duration,
            interval: args
                .interval
                .unwrap_or_else(|| default_interval(args.duration)),
            outputs: args.output.outputs(args.json),
            serve: args.serve,
            metrics_stacks: args.metrics_stacks,
            min_age: args.min_age,
            thresholds: Thresholds {
                min_rate: args.min_rate,
                steady_ratio: ratio(
                    "--steady-ratio",
                    args.steady_ratio,
                    "the share of intervals a leak grows or holds in",
                )?,
                slowdown_ratio: ratio(
                    "--slowdown-ratio",
                    args.slowdown_ratio,
                    "a leak's second-half rate over its first-half rate",
                )?,
                severity_rates: args.severity_rates,
            },
            sample_bytes,
            max_allocations: args.max_allocations,
            max_stacks: args.max_stacks,
            unwind,
            max_depth: args.max_depth,
            max_unwind_rows: args.max_unwind_rows.max(1),
            allow_large_maps: args.allow_large_maps,
            empty_programs: args.empty_programs,
            probes_at_symbol_entry: args.probes_at_symbol_entry,
            program_stats: args.program_stats,
            reachability: args.reachability,
            max_pause: args.max_pause,
            reachability_heuristics: args.reachability_heuristics,
            quiet: args.quiet,
            verbose: args.verbose,
        })
    }
}

/// The sampling interval when `--interval` is not given: 5 s, or for a trace of `duration` a
/// tenth of it within 1-5 s (a 10 s trace at 5 s would take 3 samples, too few to judge growth).
fn default_interval(duration: Option<Duration>) -> Duration {
    const LONGEST: Duration = Duration::from_secs(5);
    match duration {
        Some(duration) => (duration / 10).clamp(Duration::from_secs(1), LONGEST),
        None => LONGEST,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn config(argv: &[&str]) -> Result<TraceConfig, ConfigError> {
        let cli = Cli::try_parse_from(["leaktracer", "trace"].iter().chain(argv)).unwrap();
        match cli.command {
            Command::Trace(args) => (*args).try_into(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let parsed = config(&["--pid", "42"]).unwrap();
        let by_hand = TraceConfig::new(TargetSpec::Pid(42));
        assert_eq!(format!("{parsed:?}"), format!("{by_hand:?}"));
    }

    #[test]
    fn targets_and_outputs_are_carried_over() {
        let launch = config(&["--json", "r.json", "--top", "3", "--", "./app", "-x"]).unwrap();
        assert_eq!(
            launch.target,
            TargetSpec::Launch(vec!["./app".into(), "-x".into()])
        );
        assert_eq!(launch.outputs.json, Some(PathBuf::from("r.json")));
        assert_eq!(launch.outputs.top, 3);
        let sampled = config(&["--pid", "1", "--sample-bytes"]).unwrap();
        assert_eq!(sampled.sample_bytes, Some(512 * 1024));
        let cgroup = config(&["--cgroup", "/sys/fs/cgroup/app"]).unwrap();
        assert_eq!(
            cgroup.target,
            TargetSpec::Cgroup("/sys/fs/cgroup/app".into())
        );
    }

    #[test]
    fn plumbing_flags_are_carried_over() {
        use crate::report::plumbing::Pattern;
        let extra = config(&[
            "--pid",
            "1",
            "--plumbing",
            "my_alloc*",
            "--plumbing",
            "pool_get",
        ])
        .unwrap();
        assert_eq!(
            extra.outputs.plumbing,
            Plumbing::new(vec![
                Pattern::Prefix("my_alloc".into()),
                Pattern::Exact("pool_get".into())
            ])
        );
        let keep = config(&["--pid", "1", "--keep-plumbing"]).unwrap();
        assert_eq!(keep.outputs.plumbing, Plumbing::keep_all());
        let both = [
            "leaktracer",
            "trace",
            "--pid",
            "1",
            "--keep-plumbing",
            "--plumbing",
            "f",
        ];
        assert!(Cli::try_parse_from(both).is_err());
        assert!(
            Cli::try_parse_from(["leaktracer", "trace", "--pid", "1", "--plumbing", "*"]).is_err()
        );
        let report = Cli::try_parse_from(["leaktracer", "report", "r.json", "--keep-plumbing"]);
        match report.unwrap().command {
            Command::Report(args) => {
                assert_eq!(args.output.outputs(None).plumbing, Plumbing::keep_all())
            }
            _ => unreachable!(),
        }
        let diff =
            Cli::try_parse_from(["leaktracer", "diff", "a.json", "b.json", "--plumbing", "f"]);
        match diff.unwrap().command {
            Command::Diff(args) => assert_eq!(
                args.options().plumbing,
                Plumbing::new(vec![Pattern::Exact("f".into())])
            ),
            _ => unreachable!(),
        }
    }

    #[test]
    fn follow_children_with_a_cgroup_is_rejected() {
        for target in [
            ["--cgroup", "/sys/fs/cgroup/app"],
            ["--container", "abc123"],
        ] {
            let mut argv = target.to_vec();
            argv.push("--follow-children");
            assert_eq!(
                config(&argv).unwrap_err(),
                ConfigError::FollowChildrenWithCgroup
            );
        }
        assert!(
            config(&["--pid", "7", "--follow-children"])
                .unwrap()
                .follow_children
        );
    }

    #[test]
    fn the_default_interval_gives_a_short_trace_enough_samples() {
        let interval = |argv: &[&str]| config(argv).unwrap().interval;
        let secs = Duration::from_secs;
        assert_eq!(interval(&["--pid", "7"]), secs(5));
        assert_eq!(interval(&["--pid", "7", "--duration", "10s"]), secs(1));
        assert_eq!(interval(&["--pid", "7", "--duration", "30s"]), secs(3));
        assert_eq!(interval(&["--pid", "7", "--duration", "10m"]), secs(5));
        assert_eq!(interval(&["--pid", "7", "--duration", "3s"]), secs(1));
        // Given, it is taken as it is.
        assert_eq!(
            interval(&["--pid", "7", "--duration", "10s", "--interval", "5s"]),
            secs(5)
        );
    }
}
