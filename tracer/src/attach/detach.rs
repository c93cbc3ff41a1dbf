//! Closing many links at once. Each uprobe link the kernel tears down waits for an RCU grace
//! period (about 0.1 s per perf-event uprobe here, 30-50 ms per `uprobe_multi` link), and the
//! waits of one thread are serialized; closed from several threads they overlap.

use std::time::{Duration, Instant};

/// Threads that close links together: the closes mostly sleep in the kernel, so more threads
/// than CPUs still help.
const CLOSING_THREADS: usize = 32;

/// Drops every item (links: closing the fd detaches) from up to [`CLOSING_THREADS`] threads,
/// and returns how long it took.
pub fn drop_in_parallel<T: Send>(items: Vec<T>) -> Duration {
    let started = Instant::now();
    let threads = items.len().min(CLOSING_THREADS);
    if threads <= 1 {
        drop(items);
        return started.elapsed();
    }
    let mut shares: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        shares[i % threads].push(item);
    }
    std::thread::scope(|scope| {
        for share in shares {
            // A thread that cannot start closes its share here instead.
            if let Err(e) = std::thread::Builder::new()
                .name("detach".into())
                .spawn_scoped(scope, move || drop(share))
            {
                eprintln!("leaktracer: warning: closing links on one thread: {e}");
            }
        }
    });
    started.elapsed()
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn every_item_is_dropped() {
        for n in [0, 1, 2, 31, 32, 33, 500] {
            let dropped = Arc::new(AtomicUsize::new(0));
            let items = (0..n).map(|_| Counted(dropped.clone())).collect();
            drop_in_parallel(items);
            assert_eq!(dropped.load(Ordering::SeqCst), n);
        }
    }
}
