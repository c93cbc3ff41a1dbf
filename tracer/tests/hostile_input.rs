//! Hostile and careless input never panics: every flag's value parser, the validation into a
//! trace configuration, and the recording loader answer anything with a value or a one-line
//! error. Property tests: random values, many per run.

use std::{fs, path::PathBuf};

use clap::Parser;
use leaktracer::{
    cli::{Cli, Command},
    report,
    trace::TraceConfig,
    units::{MAX_DURATION_SECS, parse_bytes, parse_duration},
};
use proptest::prelude::*;

/// Flags that take a value, with a value of the right shape (the flag's own parser is what is
/// under test, not clap's handling of a missing value).
const VALUE_FLAGS: &[&str] = &[
    "--duration",
    "--interval",
    "--min-age",
    "--min-rate",
    "--steady-ratio",
    "--slowdown-ratio",
    "--severity-rates",
    "--sample-bytes",
    "--max-allocations",
    "--max-stacks",
    "--max-depth",
    "--max-unwind-rows",
    "--unwind",
    "--metrics-stacks",
    "--top",
    "--allocator",
    "--plumbing",
];

/// Values a careless or hostile user types: numbers of every size and sign, units, NaN and
/// infinities, separators, overflow, empty and odd bytes.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[-+]?[0-9]{0,25}(\\.[0-9]{0,5})?(e[-+]?[0-9]{1,4})?(ms|s|m|h|d|K|M|G|KiB|x|)",
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("18446744073709551615s".to_string()),
        Just("1e309".to_string()),
        Just("0".to_string()),
        Just(",,".to_string()),
        Just("1,2".to_string()),
        Just("3M,2M,1M".to_string()),
        Just(":".to_string()),
        "[ -~]{0,12}",
        any::<String>(),
    ]
}

/// Parses `leaktracer trace --pid 1 FLAG VALUE` and validates it; returns whether it was taken.
fn try_trace(flag: &str, value: &str) -> bool {
    let argv = ["leaktracer", "trace", "--pid", "1", flag, value];
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Trace(args),
        }) => TraceConfig::try_from(*args).is_ok(),
        Ok(_) => unreachable!("parsed as trace"),
        Err(err) => {
            let text = err.to_string();
            assert!(!text.trim().is_empty(), "an error says something");
            false
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn durations_parse_in_range_or_fail(text in hostile_value()) {
        if let Ok(duration) = parse_duration(&text) {
            let secs = duration.as_secs_f64();
            prop_assert!((0.001..=MAX_DURATION_SECS).contains(&secs), "{text} -> {secs}");
        }
    }

    #[test]
    fn sizes_parse_finite_or_fail(text in hostile_value()) {
        if let Ok(bytes) = parse_bytes(&text) {
            prop_assert!(bytes.is_finite() && bytes >= 0.0, "{text} -> {bytes}");
        }
    }

    #[test]
    fn every_value_flag_takes_or_refuses_any_value(
        flag in proptest::sample::select(VALUE_FLAGS),
        value in hostile_value(),
    ) {
        try_trace(flag, &value);
    }

    #[test]
    fn taken_configurations_hold_sane_values(
        steady in hostile_value(),
        slowdown in hostile_value(),
        sample in hostile_value(),
    ) {
        let argv = [
            "leaktracer", "trace", "--pid", "1", "--steady-ratio", &steady,
            "--slowdown-ratio", &slowdown, "--sample-bytes", &sample,
        ];
        if let Ok(Cli { command: Command::Trace(args) }) = Cli::try_parse_from(argv)
            && let Ok(config) = TraceConfig::try_from(*args)
        {
            let t = config.thresholds;
            prop_assert!((0.0..=1.0).contains(&t.steady_ratio));
            prop_assert!((0.0..=1.0).contains(&t.slowdown_ratio));
            prop_assert!(config.sample_bytes.is_some_and(|n| n >= 1));
        }
    }

    #[test]
    fn the_recording_loader_refuses_garbage_with_one_line(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let path = scratch().join("garbage.json");
        fs::write(&path, &bytes).unwrap();
        if let Err(err) = report::load(&path) {
            let text = format!("{err:#}");
            prop_assert!(text.contains("is not a leaktracer recording"), "{text}");
        }
        let _ = fs::remove_file(&path);
    }
}

/// This run's own directory (runs as root and as nobody must not share one).
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leaktracer-hostile-input-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn known_bad_values_are_refused_with_their_flag_named() {
    for (flag, value) in [
        ("--duration", "18446744073709551615s"),
        ("--min-age", "1e300"),
        ("--interval", "0"),
        ("--interval", "1e-10"),
        ("--steady-ratio", "NaN"),
        ("--steady-ratio", "5"),
        ("--steady-ratio", "inf"),
        ("--sample-bytes", "0"),
        ("--max-stacks", "0"),
        ("--max-depth", "0"),
        ("--max-depth", "128"),
        ("--max-unwind-rows", "0"),
        ("--unwind", "dwarf"),
        ("--severity-rates", "3M,2M,1M"),
    ] {
        assert!(!try_trace(flag, value), "{flag} {value} was taken");
    }
}

#[test]
fn devices_and_fifos_are_not_read_as_recordings() {
    let err = format!("{:#}", report::load("/dev/zero".as_ref()).unwrap_err());
    assert!(err.contains("is not a regular file"), "{err}");
    let err = format!(
        "{:#}",
        report::load("/nonexistent.json".as_ref()).unwrap_err()
    );
    assert!(err.starts_with("cannot read /nonexistent.json"), "{err}");
}

/// Bytes this process has read so far (`rchar` of /proc/self/io: every read(2), cache or not).
fn bytes_read() -> u64 {
    fs::read_to_string("/proc/self/io")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_recording_over_the_size_limit_is_refused_before_it_is_read() {
    // Sparse: 3 GB of holes, made at once, taking no disk.
    let path = scratch().join("huge.json");
    let file = fs::File::create(&path).unwrap();
    file.set_len(3_000_000_000).unwrap();
    drop(file);
    let before = bytes_read();
    let err = format!("{:#}", report::load(&path).unwrap_err());
    let read = bytes_read() - before;
    let _ = fs::remove_file(&path);
    assert_eq!(
        err,
        format!(
            "{} is larger than 2 GiB: not a recording leaktracer writes",
            path.display()
        )
    );
    // Other tests of this binary read small files meanwhile; the 3 GB file was not read.
    assert!(read < 64 << 20, "{read} bytes read");
}

/// A recording with one stack of `addresses` frames, each after `inlined` inlined calls.
fn recording_with_a_stack(name: &str, addresses: usize, inlined: usize) -> PathBuf {
    let frame = |inlined: bool| report::Frame {
        function: "f".into(),
        module: "/m".into(),
        inlined,
        ..Default::default()
    };
    let mut frames = Vec::new();
    for _ in 0..addresses {
        frames.extend(std::iter::repeat_with(|| frame(true)).take(inlined));
        frames.push(frame(false));
    }
    let recording = report::Report {
        stacks: vec![report::Stack {
            id: "0123456789ab".into(),
            outstanding_bytes: 1,
            outstanding_allocations: 1,
            frames,
            ..Default::default()
        }],
        ..Default::default()
    };
    let path = scratch().join(name);
    fs::write(&path, serde_json::to_vec(&recording).unwrap()).unwrap();
    path
}

#[test]
fn a_stack_deeper_than_a_trace_records_is_refused() {
    // The deepest a trace records: the kernel's 127 addresses, each with inlined calls.
    let deepest = recording_with_a_stack("deepest.json", 127, 64);
    assert_eq!(
        report::load(&deepest).unwrap().stacks[0].frames.len(),
        127 * 65
    );
    for (name, addresses, inlined, why) in [
        (
            "deeper.json",
            128,
            0,
            "has 128 frames, more than the 127 a stack can have",
        ),
        (
            "million.json",
            1_000_000,
            0,
            "has 1000000 frames, more than the 127 a stack can have",
        ),
        (
            "inlined.json",
            1,
            65,
            "has more than 64 inlined calls at one address",
        ),
    ] {
        let path = recording_with_a_stack(name, addresses, inlined);
        let err = format!("{:#}", report::load(&path).unwrap_err());
        assert_eq!(
            err,
            format!(
                "{}: stack 0123456789ab {why}: not a recording leaktracer writes",
                path.display()
            )
        );
        let _ = fs::remove_file(&path);
    }
}
