//! `--serve ADDR`: while it traces, leaktracer answers HTTP with what it sees — Prometheus
//! metrics, the report as JSON, the timeline, the leaks, the processes, a live dashboard and
//! the current flamegraph.
//!
//! Every body is rendered on the trace's side once per interval and published as one immutable
//! [`Published`] set; the server (its own thread and async runtime) only hands out clones of
//! it. So a slow or stuck client holds nothing the trace needs: publishing swaps a pointer.
//!
//! [`metrics`] renders `/metrics`, [`api`] the other JSON endpoints. Every request must be
//! addressed to the server ([`host`]), and a scan, which stops the target, is made only on
//! `POST /api/reachability` with `--reachability` ([`scans`]).

mod api;
mod host;
mod metrics;
mod scans;

use std::{
    net::{SocketAddr, TcpListener, ToSocketAddrs},
    sync::{Arc, RwLock},
    thread::JoinHandle,
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use tokio::sync::{mpsc, oneshot};

use crate::{report::Report, target::process::ProcessUsage};

/// The dashboard page: static, it fetches the JSON endpoints and the flamegraph itself.
const DASHBOARD: &str = include_str!("dashboard.html");

/// One interval's bodies, ready to send.
#[derive(Clone, Default)]
pub struct Published {
    pub metrics: Bytes,
    pub snapshot: Bytes,
    pub history: Bytes,
    pub leaks: Bytes,
    pub process: Bytes,
    pub flamegraph: Bytes,
    /// `/api/leaks?by=function`: the report's `functions`.
    pub functions: Bytes,
}

/// A traced process as `/api/process` and the metrics show it.
#[derive(Clone, Debug)]
pub struct LiveProcess {
    pub pid: u32,
    /// Usage now; `None` once the process has exited.
    pub usage: Option<ProcessUsage>,
}

impl Published {
    /// Renders every body from the current report.
    pub fn render(
        report: &Report,
        processes: &[LiveProcess],
        interval_secs: f64,
        metric_stacks: usize,
    ) -> anyhow::Result<Self> {
        let mut flamegraph = Vec::new();
        crate::report::flamegraph::write_svg(report, &report.title(), &mut flamegraph)?;
        Ok(Self {
            metrics: metrics::render(report, processes, metric_stacks).into(),
            snapshot: serde_json::to_vec(report)?.into(),
            history: serde_json::to_vec(&api::history(report, interval_secs))?.into(),
            leaks: serde_json::to_vec(&api::leaks(report))?.into(),
            functions: serde_json::to_vec(&report.functions)?.into(),
            process: serde_json::to_vec(&api::processes(report, processes))?.into(),
            flamegraph: flamegraph.into(),
        })
    }
}

type Shared = Arc<RwLock<Option<Arc<Published>>>>;

/// The running server.
pub struct Server {
    pub addr: SocketAddr,
    published: Shared,
    /// Scans asked for at `POST /api/reachability` (with `--reachability` only), each with
    /// where its answer goes: the trace's loop takes this and runs them (a scan ptraces the
    /// target, from the trace's thread).
    pub scan_requests: Option<mpsc::Receiver<ScanRequest>>,
    _thread: JoinHandle<()>,
}

/// A reachability scan asked for over HTTP: the JSON answer goes back through it.
pub type ScanRequest = oneshot::Sender<Bytes>;

/// `ADDR` of `--serve`: `PORT` or `:PORT` bind loopback; `HOST:PORT` binds that address.
pub fn parse_addr(spec: &str) -> Result<SocketAddr, String> {
    let port_only = spec.strip_prefix(':').unwrap_or(spec);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    spec.to_socket_addrs()
        .map_err(|e| format!("`{spec}` is not HOST:PORT or PORT: {e}"))?
        .next()
        .ok_or_else(|| format!("`{spec}` resolves to no address"))
}

/// Why a bind failed, and what to do, by its real cause.
fn bind_advice(err: &std::io::Error, addr: SocketAddr) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::AddrInUse => {
            format!("{err}; pick another port, or stop the program using it")
        }
        ErrorKind::PermissionDenied => {
            format!("{err}; ports below 1024 need CAP_NET_BIND_SERVICE: pick a port from 1024 up")
        }
        ErrorKind::AddrNotAvailable => format!(
            "{err}; {} is not an address of this machine: use a port alone (127.0.0.1), or an address `ip addr` lists",
            addr.ip()
        ),
        _ => err.to_string(),
    }
}

/// Whether clients may ask for reachability scans, which stop the target.
#[derive(Clone, Copy, Debug)]
pub enum Scans {
    /// Without `--reachability`: `/api/reachability` stops nothing.
    Off,
    /// With `--reachability`: on POST, each stopping the target for at most this
    /// (`--max-pause`), at most one per ten times it.
    On { max_pause: Duration },
}

impl Server {
    /// Binds `addr` now (so a taken port is an error before tracing starts) and serves on a
    /// thread of its own.
    pub fn start(addr: SocketAddr, scans: Scans) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {addr} (--serve): {}",
                bind_advice(&e, addr)
            )
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (requests, scan_requests) = mpsc::channel(4);
        let gate = match scans {
            Scans::Off => None,
            Scans::On { max_pause } => Some(Arc::new(scans::Gate::new(requests, max_pause))),
        };
        if !addr.ip().is_loopback() {
            eprintln!(
                "leaktracer: warning: {}",
                exposure_warning(addr, gate.as_deref())
            );
        }
        let published: Shared = Arc::new(RwLock::new(None));
        let scans_on = gate.is_some();
        let app =
            router(published.clone(), gate).into_make_service_with_connect_info::<host::Reached>();
        let thread = std::thread::Builder::new()
            .name("leaktracer-serve".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        eprintln!("leaktracer: warning: cannot start the HTTP server: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            eprintln!("leaktracer: warning: cannot serve: {e}");
                            return;
                        }
                    };
                    if let Err(e) = axum::serve(listener, app).await {
                        eprintln!("leaktracer: warning: the HTTP server stopped: {e}");
                    }
                });
            })?;
        Ok(Self {
            addr,
            published,
            scan_requests: scans_on.then_some(scan_requests),
            _thread: thread,
        })
    }

    /// Makes `bodies` what every endpoint answers from now on.
    pub fn publish(&self, bodies: Published) {
        let fresh = Arc::new(bodies);
        match self.published.write() {
            Ok(mut slot) => *slot = Some(fresh),
            Err(poisoned) => *poisoned.into_inner() = Some(fresh),
        }
    }
}

/// What a client anywhere on the network can do to a server not bound to loopback.
fn exposure_warning(addr: SocketAddr, gate: Option<&scans::Gate>) -> String {
    let stops = match gate {
        Some(gate) => format!(
            "and, with --reachability, stop the target (POST /api/reachability: for up to --max-pause each time, at most once every {:.1} s)",
            gate.min_gap.as_secs_f64()
        ),
        None => "but cannot stop it (no scans without --reachability)".to_string(),
    };
    format!(
        "serving on {addr}, not loopback: anyone who can reach it sees the target's call stacks, command line and memory figures, {stops}; serve on 127.0.0.1 and tunnel (ssh -L) to keep them to yourself"
    )
}

fn router(published: Shared, gate: Option<Arc<scans::Gate>>) -> Router {
    Router::new()
        .route(
            "/api/reachability",
            get(scans::get).post(move || scans::post(gate.clone())),
        )
        .route("/", get(dashboard))
        .route("/metrics", get(metrics_body))
        .route("/api/snapshot", get(snapshot_body))
        .route("/api/history", get(history_body))
        .route("/api/leaks", get(leaks_body))
        .route("/api/process", get(process_body))
        .route("/flamegraph.svg", get(flamegraph_body))
        .with_state(published)
        .layer(axum::middleware::from_fn(host::check))
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// The current body picked by `pick`, or 503 before the first sample.
fn current(
    published: &Shared,
    pick: fn(&Published) -> &Bytes,
    content_type: &'static str,
) -> Response {
    let page = published
        .read()
        .map(|slot| slot.clone())
        .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
    match page {
        Some(page) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-store"),
            ],
            pick(&page).clone(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "leaktracer: no sample yet; try again in a moment\n",
        )
            .into_response(),
    }
}

const JSON: &str = "application/json";

async fn metrics_body(State(p): State<Shared>) -> Response {
    current(
        &p,
        |p| &p.metrics,
        "text/plain; version=0.0.4; charset=utf-8",
    )
}
async fn snapshot_body(State(p): State<Shared>) -> Response {
    current(&p, |p| &p.snapshot, JSON)
}
async fn history_body(State(p): State<Shared>) -> Response {
    current(&p, |p| &p.history, JSON)
}
async fn leaks_body(State(p): State<Shared>, uri: axum::http::Uri) -> Response {
    // `?by=function`: outstanding memory by function, inclusive (the report's `functions`).
    if uri.query() == Some("by=function") {
        return current(&p, |p| &p.functions, JSON);
    }
    current(&p, |p| &p.leaks, JSON)
}
async fn process_body(State(p): State<Shared>) -> Response {
    current(&p, |p| &p.process, JSON)
}
async fn flamegraph_body(State(p): State<Shared>) -> Response {
    current(&p, |p| &p.flamegraph, "image/svg+xml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_binds_loopback() {
        assert_eq!(
            parse_addr("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_addr(":9000").unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            parse_addr("0.0.0.0:80").unwrap(),
            "0.0.0.0:80".parse().unwrap()
        );
        assert!(parse_addr("no port here").is_err());
    }
}
