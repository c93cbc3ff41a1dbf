//! End-to-end: growth over time — classification against workloads of known shape, the verdict's
//! time to the memory limit, re-rendering with `report`, `diff`, and the HTML page in Chromium.

use std::{fs, os::unix::fs::PermissionsExt, process::Command};

use leaktracer_e2e::*;
use serde_json::Value;

/// The truth of `growth`'s steady leak: 4096 bytes every 20 ms.
const STEADY_RATE: f64 = 4096.0 * 50.0;

fn growth_of<'a>(report: &'a Value, function: &str) -> &'a Value {
    let stacks = stacks_at(report, function);
    assert_eq!(stacks.len(), 1, "one stack at {function}");
    &stacks[0]["growth"]
}

/// The bar: 60 s at --interval 5s. Steady leak classed `leak` within 10% of its true rate, the
/// bounded cache a plateau, churn churn, the late leak a leak, and the verdict's time to the
/// cgroup limit exactly (limit - usage) / rate. Then `report` (without root) reproduces every
/// output byte for byte, and the HTML renders in Chromium.
#[test]
fn sixty_seconds_of_known_shapes() {
    require_root();
    let dir = scratch_dir("growth60");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let cgroup = MemoryCgroup::create(&format!("leaktracer-e2e-{}", std::process::id()), 1 << 30);
    let mut target = start_growth(&["--late", "30"]);
    cgroup.add(target.pid());
    release_growth(&mut target);

    let file = |name: &str| dir.join(name);
    let run = run_tracer([
        "trace".as_ref(),
        "--pid".as_ref(),
        target.pid().to_string().as_ref(),
        "--duration".as_ref(),
        "60s".as_ref(),
        "--interval".as_ref(),
        "5s".as_ref(),
        "--json".as_ref(),
        file("run.json").as_os_str(),
        "--html".as_ref(),
        file("run.html").as_os_str(),
        "--flamegraph".as_ref(),
        file("run.svg").as_os_str(),
        "--folded".as_ref(),
        file("run.folded").as_os_str(),
    ]);
    drop(target);
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&file("run.json"));

    // Live status lines (stderr is a pipe: plain lines), one per interval.
    let status_lines = run
        .stderr
        .lines()
        .filter(|l| l.contains("outstanding") && l.contains("top grower"))
        .count();
    assert!(status_lines >= 11, "{}", run.stderr);

    let steady = growth_of(&report, "steady_leak");
    assert_eq!(steady["class"], "leak", "{steady}");
    let rate = steady["bytes_per_sec"].as_f64().unwrap();
    assert!(
        (rate - STEADY_RATE).abs() / STEADY_RATE < 0.10,
        "steady rate {rate} vs {STEADY_RATE}"
    );
    assert_eq!(steady["severity"], "high", "{steady}");
    let cache = growth_of(&report, "cache_insert");
    assert_eq!(cache["class"], "plateau", "{cache}");
    assert_eq!(growth_of(&report, "churn_step")["class"], "churn");
    assert_eq!(growth_of(&report, "late_leak")["class"], "leak");

    // Timeline: a sample per interval, with RSS; each stack has its own.
    let timeline = report["timeline"].as_array().unwrap();
    assert!(timeline.len() >= 13, "{}", timeline.len());
    assert!(
        timeline
            .iter()
            .all(|p| p["rss_bytes"].as_u64().unwrap() > 0)
    );
    let steady_stack = stacks_at(&report, "steady_leak")[0];
    assert_eq!(
        steady_stack["timeline"].as_array().unwrap().len(),
        timeline.len()
    );

    // The verdict and the time-to-limit arithmetic, against the cgroup we made.
    let verdict = &report["verdict"];
    assert_eq!(verdict["leak"], true);
    assert_eq!(
        verdict["memory_limit_bytes"].as_u64().unwrap(),
        cgroup.limit_bytes
    );
    assert!(
        verdict["memory_limit_source"]
            .as_str()
            .unwrap()
            .contains(cgroup.dir.to_str().unwrap())
    );
    let usage = verdict["memory_usage_bytes"].as_u64().unwrap();
    assert!(usage > 0 && usage < cgroup.limit_bytes);
    let growth = verdict["growth_bytes_per_sec"].as_f64().unwrap();
    assert!(growth > STEADY_RATE * 0.9, "{verdict}");
    let expected = (cgroup.limit_bytes - usage) as f64 / growth;
    let seconds = verdict["seconds_to_limit"].as_f64().unwrap();
    assert!(
        (seconds - expected).abs() <= expected * 1e-9,
        "{seconds} vs {expected}"
    );
    assert!(run.stdout.contains("verdict: LEAK"), "{}", run.stdout);

    // `report` re-renders the same outputs from the JSON, without root.
    let again = run_unprivileged([
        "report".as_ref(),
        file("run.json").as_os_str(),
        "--html".as_ref(),
        file("again.html").as_os_str(),
        "--flamegraph".as_ref(),
        file("again.svg").as_os_str(),
        "--folded".as_ref(),
        file("again.folded").as_os_str(),
    ]);
    assert!(again.status.success(), "{}", again.stderr);
    assert_eq!(again.stdout, run.stdout, "text report");
    for (ours, theirs) in [
        ("run.html", "again.html"),
        ("run.svg", "again.svg"),
        ("run.folded", "again.folded"),
    ] {
        assert_eq!(
            fs::read(file(ours)).unwrap(),
            fs::read(file(theirs)).unwrap(),
            "{theirs}"
        );
    }

    // The HTML page, rendered by Chromium: chart lines and the flamegraph's frames.
    let dom = chromium_dom(&file("run.html"));
    let paths = dom.matches("class=\"series\"").count();
    assert!(paths >= 4, "chart lines: {paths}");
    assert!(
        dom.contains("data-name=\"steady_leak"),
        "the leak has its own line"
    );
    assert_eq!(
        attribute(&dom, "flamegraph-status", "data-rendered").as_deref(),
        Some("yes")
    );
    let functions = attribute(&dom, "flamegraph-status", "data-functions").unwrap();
    assert!(functions.lines().any(|f| f == "steady_leak"), "{functions}");
    assert!(dom.contains("class=\"verdict leak\""));
}

/// `diff` of two recordings of the same program whose leak doubles: that stack is on top, and
/// the differential flamegraph names it. No root needed.
#[test]
fn diff_shows_the_stack_that_grew() {
    require_root();
    let dir = scratch_dir("diff");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let record = |leak: &str, json: &std::path::Path| {
        let mut target = start_growth(&["--leak", leak, "--no-late"]);
        release_growth(&mut target);
        let run = run_tracer([
            "trace".as_ref(),
            "--pid".as_ref(),
            target.pid().to_string().as_ref(),
            "--duration".as_ref(),
            "6s".as_ref(),
            "--interval".as_ref(),
            "1s".as_ref(),
            "--quiet".as_ref(),
            "--json".as_ref(),
            json.as_os_str(),
        ]);
        drop(target);
        assert!(run.status.success(), "{}", run.stderr);
    };
    let (before, after) = (dir.join("before.json"), dir.join("after.json"));
    record("4096", &before);
    record("8192", &after);
    let svg = dir.join("growth.svg");
    let diff = run_unprivileged([
        "diff".as_ref(),
        before.as_os_str(),
        after.as_os_str(),
        "--flamegraph".as_ref(),
        svg.as_os_str(),
    ]);
    assert!(diff.status.success(), "{}", diff.stderr);
    let first_row = diff
        .stdout
        .lines()
        .skip_while(|l| !l.contains("change"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        first_row.contains("steady_leak <- steady_thread"),
        "{}",
        diff.stdout
    );
    assert!(first_row.trim_start().starts_with('+'), "{}", diff.stdout);
    let svg_text = fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("steady_leak"));
}

/// `report` on input that is not a recording fails in one line and writes nothing.
#[test]
fn report_rejects_what_is_not_a_recording() {
    let dir = scratch_dir("report_bad");
    let bogus = dir.join("bogus.json");
    fs::write(&bogus, "{\"hello\": 1}").unwrap();
    let out = Command::new(leaktracer())
        .args([
            "report".as_ref(),
            bogus.as_os_str(),
            "--flamegraph".as_ref(),
            dir.join("x.svg").as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not a leaktracer recording"), "{stderr}");
    assert!(!dir.join("x.svg").exists());
}

/// `--min-age` counts only allocations older than the age: churn's short-lived blocks vanish,
/// the steady leak keeps exactly what it leaked up to that age before the end.
#[test]
fn min_age_hides_in_flight_memory() {
    require_root();
    let dir = scratch_dir("min_age");
    let json = dir.join("run.json");
    let mut target = start_growth(&["--no-late"]);
    release_growth(&mut target);
    let run = run_tracer([
        "trace".as_ref(),
        "--pid".as_ref(),
        target.pid().to_string().as_ref(),
        "--duration".as_ref(),
        "6s".as_ref(),
        "--interval".as_ref(),
        "1s".as_ref(),
        "--min-age".as_ref(),
        "3s".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    drop(target);
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_eq!(report["min_age_secs"].as_f64(), Some(3.0));
    // Churn blocks live ~1 ms.
    assert_sites(&report, &[("churn_step", 0, 0)]);
    let duration = report["duration_secs"].as_f64().unwrap();
    let (bytes, count) = outstanding_at(&report, "steady_leak");
    let expected = (duration - 3.0) * 50.0;
    assert!(
        (count as f64 - expected).abs() <= 5.0,
        "{count} blocks, expected about {expected}"
    );
    assert_eq!(bytes, count * 4096);
}
