//! End-to-end: live diagnostics while tracing (`--serve`) — a real Prometheus scraping
//! /metrics, the JSON endpoints, the dashboard in headless Chromium, endpoints under load with
//! a stuck client — and the pprof export decoded with a protobuf decoder.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use leaktracer_e2e::*;
use serde_json::Value;

/// Starts `leaktracer trace --pid PID --interval 1s --serve ADDR EXTRA...` and waits until it
/// traces.
fn serve(pid: u32, addr: SocketAddr, extra: &[&str]) -> Tracer {
    let mut args = vec![
        "trace".to_string(),
        "--pid".into(),
        pid.to_string(),
        "--interval".into(),
        "1s".into(),
        "--serve".into(),
        addr.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut tracer = Tracer::start(args);
    tracer.wait_attached();
    tracer
}

/// `GET path` as JSON, once the first sample is published.
fn get_json(addr: SocketAddr, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(addr, path, Duration::from_secs(10));
        if status == 200 {
            return serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
        }
        assert_eq!(status, 503, "{path}: {body}");
        assert!(Instant::now() < deadline, "{path}: still no sample");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prometheus from Debian's package, on loopback, with its own config and storage.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    /// `None` (and a message saying why) when the binary is not installed.
    fn start(dir: &std::path::Path, scrape: SocketAddr) -> Option<Self> {
        if Command::new("prometheus")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!(
                "SKIP: prometheus is not installed and could not be (`cargo xtask test` installs \
                 Debian's prometheus package); the Prometheus scrape test did not run"
            );
            return None;
        }
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: leaktracer\n    static_configs:\n      - targets: ['{scrape}']\n"
            ),
        )
        .unwrap();
        let addr = free_loopback_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts");
        let prometheus = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).is_err()
            || http_get(addr, "/-/ready", Duration::from_secs(5)).0 != 200
        {
            assert!(Instant::now() < deadline, "prometheus not ready in 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(prometheus)
    }

    fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = http_get(self.addr, path_and_query, Duration::from_secs(10));
        assert_eq!(status, 200, "{path_and_query}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bar's first half: Prometheus scrapes `--serve` while `growth` leaks 200 KiB/s under
/// steady_leak; its query API shows that stack's series rising, the scrape target is healthy
/// (the exposition parsed), and /api/leaks lists the stack.
#[test]
fn prometheus_sees_the_leak_series_rise() {
    require_root();
    let dir = scratch_dir("serve_prometheus");
    let mut target = start_growth(&["--no-late"]);
    release_growth(&mut target);
    let addr = free_loopback_addr();
    let tracer = serve(target.pid(), addr, &[]);
    let Some(prometheus) = Prometheus::start(&dir, addr) else {
        return;
    };
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    std::thread::sleep(Duration::from_secs(12));
    let end = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    let targets = prometheus.api("/api/v1/targets");
    let active = &targets["data"]["activeTargets"][0];
    assert_eq!(active["health"], "up", "scrape target: {active}");
    assert_eq!(active["lastError"], "", "{active}");

    let query = url_encode("leaktracer_stack_outstanding_bytes{function=\"steady_leak\"}");
    let range = prometheus.api(&format!(
        "/api/v1/query_range?query={query}&start={start:.3}&end={end:.3}&step=1"
    ));
    let series = range["data"]["result"].as_array().unwrap();
    assert_eq!(series.len(), 1, "one steady_leak series: {range}");
    let values: Vec<f64> = series[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[1].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(values.len() >= 6, "{values:?}");
    assert!(
        values.windows(2).all(|w| w[1] >= w[0]),
        "the leak's series never goes down: {values:?}"
    );
    let rise = values.last().unwrap() - values.first().unwrap();
    // 204800 B/s for the span between the first and last point.
    assert!(
        rise >= 204800.0 * (values.len() as f64 - 3.0),
        "rose {rise} over {} points: {values:?}",
        values.len()
    );
    let stack_id = series[0]["metric"]["stack_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(stack_id.len(), 12, "{stack_id}");
    // The process-wide gauge is there too, and the growth-rate series.
    let total = prometheus.api(&format!(
        "/api/v1/query?query={}",
        url_encode("leaktracer_outstanding_bytes")
    ));
    assert_eq!(
        total["data"]["result"].as_array().unwrap().len(),
        1,
        "{total}"
    );

    let leaks = get_json(addr, "/api/leaks");
    let steady = leaks
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["function"] == "steady_leak")
        .unwrap_or_else(|| panic!("steady_leak among the leaks: {leaks}"));
    assert_eq!(steady["id"], stack_id.as_str());
    let rate = steady["bytes_per_sec"].as_f64().unwrap();
    assert!((rate - 204800.0).abs() / 204800.0 < 0.1, "{steady}");
    assert!(
        leaks
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["function"] != "churn_step"),
        "{leaks}"
    );

    let process = get_json(addr, "/api/process");
    let entry = &process[0];
    assert_eq!(entry["pid"], target.pid());
    assert_eq!(entry["comm"], "growth");
    assert!(entry["rss_bytes"].as_u64().unwrap() > 0, "{entry}");
    // main, steady_thread, cache_thread, churn_thread (--no-late: no late_thread).
    assert_eq!(entry["threads"], 4, "{entry}");
    assert!(entry["open_fds"].as_u64().unwrap() >= 3, "{entry}");

    tracer.interrupt();
    assert!(tracer.finish().status.success());
}

/// The dashboard, loaded from `--serve` in headless Chromium: the verdict, the chart's lines,
/// the growers table and the flamegraph all show the leaking function.
#[test]
fn dashboard_renders_the_leak_in_chromium() {
    require_root();
    let dir = scratch_dir("serve_dashboard");
    let mut target = start_growth(&["--no-late"]);
    release_growth(&mut target);
    let addr = free_loopback_addr();
    let tracer = serve(target.pid(), addr, &[]);
    std::thread::sleep(Duration::from_secs(6));
    let dom = chromium_dom_of(&format!("http://{addr}/"), &dir.join("chromium-profile"));
    tracer.interrupt();
    assert!(tracer.finish().status.success());

    let section = |id: &str| {
        let start = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("#{id} in the DOM"));
        let end = dom[start..]
            .find("<h2")
            .map_or(dom.len(), |offset| start + offset);
        &dom[start..end]
    };
    assert!(
        section("verdict").contains("LEAK"),
        "{}",
        section("verdict")
    );
    let chart = section("chart");
    assert!(chart.matches("class=\"series\"").count() >= 3, "{chart}");
    assert!(chart.contains(" d=\"M"), "chart lines have points: {chart}");
    assert!(section("legend").contains("steady_leak"));
    // Both fill at 200-256 KiB/s in the first 16 s (the cache, then, is a leak too).
    let growers = section("growers");
    let rows: Vec<&str> = growers.split("<tr>").skip(2).collect();
    let steady = rows
        .iter()
        .find(|row| row.contains(">steady_leak<"))
        .unwrap_or_else(|| panic!("a steady_leak row: {growers}"));
    assert!(steady.contains(">leak<"), "{steady}");
    assert!(
        rows.iter()
            .position(|r| r.contains(">steady_leak<"))
            .unwrap()
            < 2,
        "among the two fastest growers: {growers}"
    );
    let flamegraph = section("flamegraph");
    assert!(flamegraph.contains("<svg"), "{flamegraph}");
    assert!(flamegraph.contains("steady_leak"), "{flamegraph}");
    assert!(flamegraph.contains("cache_insert"), "{flamegraph}");
}

/// While the target allocates on two threads at full speed, the endpoints keep answering, and
/// a client that connects and never finishes its request, plus one that never reads its
/// answer, stall neither the server nor the trace (samples keep coming).
#[test]
fn endpoints_answer_under_load_and_stuck_clients_stall_nothing() {
    require_root();
    let target = Workload(
        Command::new(workload("leaky"))
            .args(["idle", "30"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = free_loopback_addr();
    let mut tracer = serve(target.pid(), addr, &[]);
    get_json(addr, "/api/history");

    // Half a request, never finished; a whole one whose answer is never read.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .unwrap();
    let mut deaf = TcpStream::connect(addr).unwrap();
    for _ in 0..50 {
        deaf.write_all(format!("GET /api/snapshot HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .unwrap();
    }

    let first = get_json(addr, "/api/history")["timeline"]
        .as_array()
        .unwrap()
        .len();
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(5) {
        for path in [
            "/metrics",
            "/api/snapshot",
            "/api/leaks",
            "/flamegraph.svg",
            "/",
        ] {
            let asked = Instant::now();
            let (status, body) = http_get(addr, path, Duration::from_secs(5));
            assert_eq!(status, 200, "{path}");
            assert!(!body.is_empty(), "{path}");
            assert!(
                asked.elapsed() < Duration::from_secs(2),
                "{path} took {:?}",
                asked.elapsed()
            );
            answered += 1;
        }
    }
    let last = get_json(addr, "/api/history")["timeline"]
        .as_array()
        .unwrap()
        .len();
    assert!(answered >= 10, "{answered} answers");
    assert!(
        last >= first + 3,
        "sampling went on: {first} -> {last} samples"
    );
    let metrics = http_get(addr, "/metrics", Duration::from_secs(5)).1;
    let allocations: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("leaktracer_allocations_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(allocations > 1000.0, "the target allocates: {allocations}");
    drop((half, deaf));
    tracer.wait_stderr("outstanding");
    tracer.interrupt();
    let run = tracer.finish();
    assert!(run.status.success(), "{}", run.stderr);
}

/// Fields of profile.proto this test reads, written from the proto, independently of
/// leaktracer's encoder.
mod pprof {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// The bar's pprof half: `--pprof` of `leaky sites` decodes into samples whose inuse_space per
/// leaking function equals the JSON report's bytes (exact leaks: 100 x 128 B at leak_malloc),
/// with symbolized locations and the workload's mapping carrying its build id.
#[test]
fn pprof_inuse_space_equals_the_json() {
    use prost::Message;
    require_root();
    let dir = scratch_dir("pprof");
    let json = dir.join("run.json");
    let profile_path = dir.join("heap.pb.gz");
    let ready = dir.join("ready");
    let leaky = workload("leaky");
    let tracer = Tracer::start([
        "trace".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--pprof".as_ref(),
        profile_path.as_os_str(),
        "--".as_ref(),
        leaky.as_os_str(),
        "sites".as_ref(),
        "--hold".as_ref(),
        "--ready".as_ref(),
        ready.as_os_str(),
    ]);
    wait_for_file(&ready, Duration::from_secs(60));
    tracer.interrupt();
    let run = tracer.finish();
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);

    let mut gz = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(&profile_path).unwrap())
        .read_to_end(&mut gz)
        .expect("the profile is gzipped");
    let profile = pprof::Profile::decode(gz.as_slice()).expect("profile.proto decodes");
    let text = |index: i64| profile.string_table[index as usize].as_str();
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (text(t.r#type), text(t.unit)))
        .collect();
    assert_eq!(
        types,
        [("inuse_objects", "count"), ("inuse_space", "bytes")]
    );

    // Per leaf function (the innermost line of the first location): objects and bytes.
    let mut by_function: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for sample in &profile.sample {
        let leaf = profile
            .location
            .iter()
            .find(|l| l.id == sample.location_id[0])
            .expect("sample locations exist");
        let function = profile
            .function
            .iter()
            .find(|f| f.id == leaf.line[0].function_id)
            .expect("lines name functions");
        let entry = by_function
            .entry(text(function.name).to_string())
            .or_default();
        entry.0 += sample.value[0];
        entry.1 += sample.value[1];
    }
    assert_eq!(by_function["leak_malloc"], (100, 100 * 128));
    let mut json_by_function: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for stack in report["stacks"].as_array().unwrap() {
        let name = stack["frames"][0]["function"]
            .as_str()
            .unwrap_or("[unknown stack]")
            .to_string();
        let entry = json_by_function.entry(name).or_default();
        entry.0 += stack["outstanding_allocations"].as_i64().unwrap();
        entry.1 += stack["outstanding_bytes"].as_i64().unwrap();
    }
    assert_eq!(by_function, json_by_function);

    // leak_malloc's leaf location lies in the workload's mapping, which has its build id.
    let mapping = profile
        .mapping
        .iter()
        .find(|m| text(m.filename).ends_with("/leaky"))
        .expect("the workload's mapping");
    assert_eq!(text(mapping.build_id).len(), 40, "a GNU build id (sha1)");
    let leaf_of_leak_malloc = profile
        .location
        .iter()
        .find(|l| {
            l.line.iter().any(|line| {
                profile
                    .function
                    .iter()
                    .any(|f| f.id == line.function_id && text(f.name) == "leak_malloc")
            })
        })
        .unwrap();
    assert_eq!(leaf_of_leak_malloc.mapping_id, mapping.id);
    assert!((mapping.memory_start..mapping.memory_limit).contains(&leaf_of_leak_malloc.address));
    assert!(leaf_of_leak_malloc.line[0].line > 0, "file:line kept");
}

/// Bad `--serve` input is a one-line error before anything is attached: a taken port, an
/// address that is not one; and a non-loopback address warns that it exposes stacks, and
/// whether a remote client can stop the target (with --reachability) and how often.
#[test]
fn serve_errors_and_the_exposure_warning() {
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = run_tracer(["trace", "--serve", &addr, "--", "/bin/true"]);
    assert!(!run.status.success());
    let error = run.stderr.trim();
    assert!(
        error.starts_with("leaktracer: cannot listen on ") && error.contains("pick another port"),
        "{error}"
    );
    assert!(!error.contains("tracing"), "nothing attached: {error}");

    let run = run_tracer(["trace", "--serve", "not-an-address", "--", "/bin/true"]);
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("is not HOST:PORT or PORT"),
        "{}",
        run.stderr
    );

    // Any address but loopback: served, with the warning.
    let run = run_tracer(["trace", "--serve", "0.0.0.0:0", "--", "/bin/true"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("not loopback: anyone who can reach it sees the target's call stacks"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("but cannot stop it (no scans without --reachability)"),
        "{}",
        run.stderr
    );
    // With --reachability it says that anyone can stop the target, and how often at most.
    let run = run_tracer([
        "trace",
        "--serve",
        "0.0.0.0:0",
        "--reachability",
        "--max-pause",
        "300ms",
        "--",
        "/bin/true",
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "and, with --reachability, stop the target (POST /api/reachability: for up to --max-pause each time, at most once every 3.0 s); serve on 127.0.0.1 and tunnel (ssh -L) to keep them to yourself"
        ),
        "{}",
        run.stderr
    );
}
