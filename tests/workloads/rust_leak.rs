//! A Rust program built like a release (`-C opt-level=3`, no frame pointers: Rust's default)
//! that leaks known to the byte, for the unwinder's tests:
//!
//!   remember: 50 x 1000 B  main -> serve_requests -> handle_request -> remember
//!
//! Each buffer is pushed into a cache that is never emptied (capacity reserved up front, so the
//! pushes allocate nothing). `black_box` keeps the optimizer from proving the buffers unused.

use std::hint::black_box;
use std::sync::Mutex;

static CACHE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

#[inline(never)]
fn remember(request: usize) {
    let buffer = black_box(vec![(request % 251) as u8; 1000]);
    CACHE.lock().unwrap().push(buffer);
}

#[inline(never)]
fn handle_request(request: usize) {
    remember(black_box(request));
    black_box(request);
}

#[inline(never)]
fn serve_requests(count: usize) {
    for request in 0..count {
        handle_request(request);
    }
    black_box(count);
}

fn main() {
    CACHE.lock().unwrap().reserve_exact(64);
    serve_requests(black_box(50));
    black_box(CACHE.lock().unwrap().len());
}
