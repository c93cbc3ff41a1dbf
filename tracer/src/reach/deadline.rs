//! The pause cap as a scan keeps it. Checking "is it past the cap?" between steps lets the
//! target go one step late (a step of reading begun 1 ms before the cap ends it 20 ms after).
//! A step is begun only when one as long as the longest so far still ends in time, and the
//! time the target takes to be let go is kept aside, so the pause ends within the cap.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Kept aside for letting the target go: a fixed part, and a part per stopped thread
/// (a PTRACE_DETACH each, a few microseconds; counted generously).
const RELEASE_BASE: Duration = Duration::from_millis(1);
const RELEASE_PER_THREAD: Duration = Duration::from_micros(20);

/// When the work of a scan must be done by, and the longest step taken so far (shared by the
/// reader threads).
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
    longest_step_ns: AtomicU64,
}

impl Deadline {
    /// Work done by `at`.
    pub fn new(at: Instant) -> Self {
        Self {
            at,
            longest_step_ns: AtomicU64::new(0),
        }
    }

    /// Work done in time to let `threads` stopped threads go by `cap_ends`.
    pub fn releasing(cap_ends: Instant, threads: usize) -> Self {
        let release = RELEASE_BASE + RELEASE_PER_THREAD * threads as u32;
        Self::new(cap_ends.checked_sub(release).unwrap_or(cap_ends))
    }

    /// Whether a step as long as the longest so far still ends before the deadline.
    pub fn has_room(&self) -> bool {
        let longest = Duration::from_nanos(self.longest_step_ns.load(Ordering::Relaxed));
        Instant::now() + longest < self.at
    }

    /// Keeps the length of a step just taken.
    pub fn took(&self, step: Duration) {
        let nanos = step.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.longest_step_ns.fetch_max(nanos, Ordering::Relaxed);
    }

    /// For a run of steps: each call of the returned check ends the step begun at the call
    /// before (or at this one), keeps its length, and says whether another step still fits.
    pub fn steps(&self) -> impl Fn() -> bool + '_ {
        let begun = Cell::new(Instant::now());
        move || {
            self.took(begun.replace(Instant::now()).elapsed());
            self.has_room()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each assertion holds however late the machine runs a sleep: a late sleep only makes a
    // step longer and the deadline nearer.

    #[test]
    fn a_step_is_begun_only_when_one_as_long_still_fits() {
        let far = Deadline::new(Instant::now() + Duration::from_secs(3600));
        assert!(far.has_room(), "nothing taken yet");
        far.took(Duration::from_secs(60));
        assert!(far.has_room(), "a minute-long step fits in an hour");
        let near = Deadline::new(Instant::now() + Duration::from_secs(60));
        near.took(Duration::from_secs(61));
        assert!(!near.has_room(), "a step of 61 s does not fit in 60");
    }

    #[test]
    fn each_check_of_a_run_of_steps_ends_one() {
        let deadline = Deadline::new(Instant::now() + Duration::from_millis(100));
        let more = deadline.steps();
        std::thread::sleep(Duration::from_millis(60));
        // At least 60 ms gone and a step of at least 60 ms: it would end past 100 ms.
        assert!(!more());
    }

    #[test]
    fn room_is_kept_to_let_the_threads_go() {
        let cap_ends = Instant::now() + Duration::from_millis(500);
        let deadline = Deadline::releasing(cap_ends, 1000);
        // 1 ms + 1000 x 20 us kept aside.
        assert_eq!(cap_ends - deadline.at, Duration::from_millis(21));
        let past = Deadline::releasing(Instant::now(), 10);
        assert!(!past.has_room(), "a cap already over leaves no room");
    }
}
