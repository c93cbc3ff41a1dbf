//! `POST /api/reachability`: a scan stops the target, so it is made only when a client asks
//! for one on purpose — a POST (never a GET or HEAD, which browsers, crawlers and monitoring
//! send on their own) to a trace started with `--reachability` — one at a time, and at most
//! one per [`Gate::min_gap`]: a request that comes while a scan runs, or within that gap after
//! it, is answered with that scan.

use std::time::{Duration, Instant};

use axum::{
    body::Bytes,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::ScanRequest;

/// Longest an HTTP client waits for a scan (the pause is capped far below; the mark is not).
const SCAN_ANSWER_WAIT: Duration = Duration::from_secs(120);

/// How often a target may be stopped for a scan asked for over HTTP: `--max-pause` times
/// this, so it runs at least 90% of the time however hard it is asked.
pub const GAP_PER_PAUSE: u32 = 10;

/// Where scans asked for over HTTP go, and the last one's answer.
pub struct Gate {
    requests: mpsc::Sender<ScanRequest>,
    /// Least time from the end of one scan to the start of the next.
    pub min_gap: Duration,
    /// Held while a scan runs, so requests that come meanwhile wait for its answer.
    last: Mutex<Option<LastScan>>,
}

struct LastScan {
    ended: Instant,
    /// `None` when it did not finish.
    body: Option<Bytes>,
}

/// What a request to scan gets.
enum Answer {
    /// A scan made for this request (or one it waited for).
    Fresh(Bytes),
    /// The last scan, made this long ago: too recent for another.
    Recent(Bytes, Duration),
    /// The last scan failed this long ago; another may start after the rest of the gap.
    TooSoon(Duration),
    Unavailable(&'static str),
}

impl Gate {
    pub fn new(requests: mpsc::Sender<ScanRequest>, max_pause: Duration) -> Self {
        Self {
            requests,
            min_gap: max_pause.saturating_mul(GAP_PER_PAUSE),
            last: Mutex::new(None),
        }
    }

    /// A scan's answer: a new scan unless one ended less than `min_gap` ago.
    async fn answer(&self) -> Answer {
        let mut last = self.last.lock().await;
        if let Some(scan) = &*last {
            let age = scan.ended.elapsed();
            if age < self.min_gap {
                return match &scan.body {
                    Some(body) => Answer::Recent(body.clone(), age),
                    None => Answer::TooSoon(self.min_gap - age),
                };
            }
        }
        let answer = self.scan_now().await;
        *last = Some(LastScan {
            ended: Instant::now(),
            body: match &answer {
                Answer::Fresh(body) => Some(body.clone()),
                _ => None,
            },
        });
        answer
    }

    async fn scan_now(&self) -> Answer {
        let (answer, answered) = oneshot::channel();
        if self.requests.send(answer).await.is_err() {
            return Answer::Unavailable("the trace is ending; no scan can be made now");
        }
        match answered.await {
            Ok(body) => Answer::Fresh(body),
            Err(_) => Answer::Unavailable("the scan did not finish; see leaktracer's output"),
        }
    }
}

/// `POST /api/reachability`: scans now (or answers with the scan just made).
pub async fn post(gate: Option<std::sync::Arc<Gate>>) -> Response {
    let Some(gate) = gate else {
        return (
            StatusCode::FORBIDDEN,
            "leaktracer: scans are off: a scan stops the target, and this trace was started without --reachability; start it with --reachability to allow them\n",
        )
            .into_response();
    };
    let answer = tokio::time::timeout(SCAN_ANSWER_WAIT, gate.answer())
        .await
        .unwrap_or(Answer::Unavailable(
            "the scan did not finish; see leaktracer's output",
        ));
    let json = |body: Bytes, age: Option<Duration>| {
        let mut response = (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response();
        if let Some(age) = age {
            // HTTP's own header for an answer made earlier than asked for.
            response
                .headers_mut()
                .insert(header::AGE, age.as_secs().into());
        }
        response
    };
    match answer {
        Answer::Fresh(body) => json(body, None),
        Answer::Recent(body, age) => json(body, Some(age)),
        Answer::TooSoon(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
            format!(
                "leaktracer: the last scan failed {:.1} s ago; scans stop the target, so the next may start in {:.1} s\n",
                (gate.min_gap - wait).as_secs_f64(),
                wait.as_secs_f64()
            ),
        )
            .into_response(),
        Answer::Unavailable(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("leaktracer: {why}\n"),
        )
            .into_response(),
    }
}

/// `GET` (and `HEAD`) `/api/reachability`: never a scan, which only a POST asks for.
pub async fn get() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "POST")],
        "leaktracer: a scan stops the target, so only a POST asks for one: curl -X POST http://HOST:PORT/api/reachability (the trace needs --reachability)\n",
    )
        .into_response()
}
