//! The trace's event loop: until Ctrl-C, SIGTERM, the duration or the end of the targets, it
//! polls for new processes and unmaps, and samples every interval.

use std::{os::fd::RawFd, task::Poll, time::Duration};

use anyhow::Context;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
};

use super::{
    EndReason,
    session::Session,
    status::{Status, grower_name},
};

/// How often liveness, new processes and memory maps are checked.
const POLL: Duration = Duration::from_millis(100);

/// The signals that end a trace: held from before the first probe, so one that arrives while
/// attaching ends the trace as soon as it starts, with its report.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime's context).
    pub fn install() -> anyhow::Result<Self> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot install the {name} handler"))
        };
        Ok(Self {
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// After SIGHUP the terminal is gone and writing to it fails: standard streams that were the
/// terminal now go to /dev/null, so the files are still written (and nothing panics).
fn leave_closed_terminal() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    for fd in 0..=2 {
        // SAFETY: isatty and dup2 on plain descriptor numbers; /dev/null is open.
        unsafe {
            if libc::isatty(fd) == 1 {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// Ready once one of `fds` is readable, its readiness cleared (the caller reads them all).
async fn any_readable(fds: &[AsyncFd<RawFd>]) {
    std::future::poll_fn(|cx| {
        for fd in fds {
            if let Poll::Ready(ready) = fd.poll_read_ready(cx) {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

impl Session<'_> {
    /// The rings on which the runtimes announce new stacks, watched by the event loop (inside
    /// the runtime's context).
    fn watch_announcements(&self) -> Vec<AsyncFd<RawFd>> {
        self.runtimes
            .announcements()
            .into_iter()
            .filter_map(|fd| {
                // SAFETY: the ring's descriptor stays open (the runtimes live as long as the
                // session) until the returned AsyncFd is dropped, at the end of the event loop.
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
            })
            .collect()
    }

    /// Waits for Ctrl-C, SIGTERM or SIGHUP, the end of `duration`, or the end of the targets;
    /// samples every `interval`, and polls ([`Session::poll`]) meanwhile.
    pub(super) fn wait_for_end(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        signals: &mut Signals,
        duration: Option<Duration>,
        interval: Duration,
    ) -> anyhow::Result<EndReason> {
        runtime.block_on(async {
            let deadline = duration.map(|d| tokio::time::Instant::now() + d);
            let mut poll = tokio::time::interval(POLL);
            let mut sample = tokio::time::interval(interval);
            // New stacks with a runtime's frames are read as soon as the kernel announces
            // them: a Python code object may live only milliseconds (a module's body runs once
            // at import).
            let announcements = self.watch_announcements();
            let mut scan_requests = self.reporter.take_scan_requests();
            loop {
                tokio::select! {
                    _ = signals.interrupt.recv() => return Ok(EndReason::Interrupted),
                    _ = signals.terminate.recv() => return Ok(EndReason::Interrupted),
                    _ = signals.hangup.recv() => {
                        leave_closed_terminal();
                        return Ok(EndReason::Interrupted);
                    }
                    _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                        return Ok(EndReason::Duration);
                    }
                    _ = poll.tick() => {
                        if let Some(end) = self.poll()? {
                            return Ok(end);
                        }
                    }
                    _ = sample.tick() => self.sample()?,
                    request = async { scan_requests.as_mut().expect("guarded").recv().await }, if scan_requests.is_some() => {
                        match request {
                            Some(answer) => self.answer_scan(answer)?,
                            None => scan_requests = None,
                        }
                    }
                    _ = any_readable(&announcements), if !announcements.is_empty() => {
                        self.read_runtime_stacks();
                    }
                }
            }
        })
    }

    /// Takes one sample, publishes it when serving, and shows it on the status line.
    fn sample(&mut self) -> anyhow::Result<()> {
        self.refresh_limits();
        let snapshot = self
            .collector
            .snapshot(self.probes.maps(), self.reporter.min_age())?;
        let rss = self.processes.total_rss();
        self.history.sample(&snapshot, rss);
        if self.reporter.is_serving() {
            let elapsed = self.history.elapsed_secs();
            let report = self.build_report(&snapshot, elapsed, None);
            self.publish(&report);
        }
        if self.status.quiet {
            return Ok(());
        }
        let grower = self.history.top_grower().map(|(key, rate)| {
            let frames = self.stack_frames(&key);
            let own = self.reporter.plumbing().leading(&frames);
            let mut name = grower_name(&frames, own);
            if self.history.is_thread_stacks(&key) {
                // Its rate is what is resident of them.
                name.push_str(" (thread stacks, resident)");
            }
            (name, rate)
        });
        let line = Status {
            elapsed_secs: self.history.elapsed_secs(),
            outstanding_bytes: self.history.last_total(),
            growth_bytes_per_sec: self.history.total_rate(),
            rss_bytes: rss,
            processes: self.processes.len(),
            top_grower: grower.as_ref().map(|(name, rate)| (name.as_str(), *rate)),
        }
        .render();
        self.status.show(&line);
        Ok(())
    }
}
