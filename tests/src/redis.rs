//! Debian's redis-server, as a real program to trace.

use std::{
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use crate::workloads::Workload;

/// A Debian redis-server on a free port, killed when dropped; None (the test skips, saying
/// why) when it is not installed.
pub fn start_redis(dir: &Path) -> Option<(Workload, u16)> {
    for tool in ["redis-server", "redis-benchmark"] {
        if !crate::paths::installed(tool) {
            eprintln!("SKIP: {tool} is not installed (Debian: redis-server, redis-tools)");
            return None;
        }
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let server = Workload(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((server, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server did not listen on {port}");
}
