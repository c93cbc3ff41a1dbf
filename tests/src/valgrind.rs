//! valgrind memcheck's view of `tests/workloads/reach.c`, taken live at the moment leaktracer
//! would scan it: the workload runs under valgrind, is driven to "ready", and `vgdb` asks for a
//! leak search there. Its loss records are summed per allocation site (the innermost `site_*`
//! frame) and class, so a test can compare valgrind's verdict with the ground truth and with
//! leaktracer's `--reachability`.

use std::{
    collections::BTreeMap,
    io::Read,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::workloads::{Lines, Workload, reach_ready_pid, send_line};

/// Bytes and blocks of one site in each of memcheck's four classes, each `(bytes, blocks)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteClasses {
    pub definitely_lost: (u64, u64),
    pub indirectly_lost: (u64, u64),
    pub possibly_lost: (u64, u64),
    pub still_reachable: (u64, u64),
}

impl SiteClasses {
    /// Nothing in any class.
    pub const NONE: Self = Self {
        definitely_lost: (0, 0),
        indirectly_lost: (0, 0),
        possibly_lost: (0, 0),
        still_reachable: (0, 0),
    };

    /// The classes as leaktracer's JSON names them, in the order of the fields.
    pub const CLASSES: [&'static str; 4] = [
        "definitely_lost",
        "indirectly_lost",
        "possibly_lost",
        "still_reachable",
    ];

    /// The class named `class` (one of [`SiteClasses::CLASSES`]).
    pub fn class_mut(&mut self, class: &str) -> &mut (u64, u64) {
        match class {
            "definitely_lost" => &mut self.definitely_lost,
            "indirectly_lost" => &mut self.indirectly_lost,
            "possibly_lost" => &mut self.possibly_lost,
            "still_reachable" => &mut self.still_reachable,
            other => panic!("no reachability class {other:?}"),
        }
    }

    fn add(&mut self, class: &str, bytes: u64, blocks: u64) {
        let slot = self.class_mut(class);
        slot.0 += bytes;
        slot.1 += blocks;
    }
}

/// The key under which [`parse_loss_records`] sums the loss records that have no `site_*` frame
/// (stdio buffers, the thread DTVs that `pthread_create` callocs, ...).
pub const NO_SITE: &str = "(no site_* frame)";

/// The leak search that `vgdb` asks for: every kind, no heuristic (leaktracer implements none),
/// every loss record rather than only those that grew since the last search.
pub const VGDB_LEAK_CHECK: [&str; 7] = [
    "leak_check",
    "full",
    "kinds",
    "all",
    "heuristics",
    "none",
    "any",
];

/// valgrind's own options: the same leak kinds and heuristics for the search at exit, and its
/// gdbserver on so that `vgdb` can ask for a search while the workload runs.
pub const VALGRIND_OPTIONS: [&str; 4] = [
    "--vgdb=yes",
    "--leak-check=full",
    "--show-leak-kinds=all",
    "--leak-check-heuristics=none",
];

/// Runs the reach workload `binary` under valgrind, drives it to "ready" (stage 1, "go", stage 2),
/// has `vgdb` run a live leak search there, checks that the workload still answers "ping", sends
/// "exit" and reaps it. Returns the loss records per site (see [`parse_loss_records`]), or
/// `None`, after saying on stderr which tool is missing, when valgrind or vgdb is not installed.
/// Panics when valgrind runs but the run fails.
pub fn live_leak_check(binary: &Path) -> Option<BTreeMap<String, SiteClasses>> {
    for tool in ["valgrind", "vgdb"] {
        if !crate::paths::installed(tool) {
            eprintln!(
                "{tool} is not installed (Debian: apt-get install valgrind): no valgrind cross-check"
            );
            return None;
        }
    }
    let mut child = Command::new("valgrind")
        .args(VALGRIND_OPTIONS)
        .arg(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("valgrind starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = Lines::read(child.stdout.take().unwrap());
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buffer) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    let mut workload = Workload(child);
    let valgrind_log = || log.lock().unwrap().clone();

    // Startup under valgrind takes seconds; leave a slow machine plenty.
    let timeout = Duration::from_secs(120);
    let line = lines.next_line(timeout);
    assert_eq!(line, "stage1", "valgrind's log:\n{}", valgrind_log());
    send_line(&mut stdin, "go");
    let ready = lines.next_line(timeout);
    let pid = reach_ready_pid(&ready);
    assert_eq!(
        pid,
        workload.pid(),
        "the workload runs in valgrind's process"
    );

    let search = Command::new("vgdb")
        .arg(format!("--pid={pid}"))
        .args(VGDB_LEAK_CHECK)
        .output()
        .expect("vgdb runs");
    let output = String::from_utf8_lossy(&search.stdout).into_owned();
    assert!(
        search.status.success(),
        "vgdb {VGDB_LEAK_CHECK:?}: {}\n{output}\n{}\nvalgrind's log:\n{}",
        search.status,
        String::from_utf8_lossy(&search.stderr),
        valgrind_log()
    );

    // The search leaves the workload running, its structures intact.
    send_line(&mut stdin, "ping");
    assert_eq!(lines.next_line(timeout), "pong");
    send_line(&mut stdin, "exit");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = workload.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the workload under valgrind did not exit on \"exit\": {}",
            valgrind_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {}", valgrind_log());

    Some(
        parse_loss_records(&output)
            .unwrap_or_else(|e| panic!("vgdb's leak search output: {e}\n{output}")),
    )
}

/// One record's header, `N[ (D direct, I indirect)] bytes in B blocks are KIND in loss record X
/// of Y`: (bytes of this class, blocks, class, X, Y). For a definitely lost record with indirect
/// bytes, the class's bytes are the direct ones: the indirect bytes have records of their own.
fn parse_header(text: &str) -> Result<(u64, u64, &'static str, u64, u64), String> {
    let number = |s: &str| {
        s.replace(',', "")
            .parse::<u64>()
            .map_err(|e| format!("{s:?} is not a number ({e}) in {text:?}"))
    };
    let (sizes, rest) = text
        .split_once(" bytes in ")
        .ok_or_else(|| format!("no \" bytes in \" in {text:?}"))?;
    let bytes = match sizes.split_once(" (") {
        Some((_, split)) => {
            let direct = split
                .split_once(" direct")
                .ok_or_else(|| format!("no direct bytes in {text:?}"))?
                .0;
            number(direct)?
        }
        None => number(sizes)?,
    };
    let (blocks, rest) = rest
        .split_once(" blocks are ")
        .ok_or_else(|| format!("no \" blocks are \" in {text:?}"))?;
    let blocks = number(blocks)?;
    let (kind, rest) = rest
        .split_once(" in loss record ")
        .ok_or_else(|| format!("no \" in loss record \" in {text:?}"))?;
    let class = match kind.split(" (").next().unwrap_or(kind) {
        "definitely lost" => "definitely_lost",
        "indirectly lost" => "indirectly_lost",
        "possibly lost" => "possibly_lost",
        "still reachable" => "still_reachable",
        other => return Err(format!("unknown leak kind {other:?} in {text:?}")),
    };
    let (record, of) = rest
        .split_once(" of ")
        .ok_or_else(|| format!("no \"X of Y\" in {text:?}"))?;
    Ok((bytes, blocks, class, number(record)?, number(of.trim())?))
}

/// The function of a stack line, `at 0x48417B4: malloc (in ...)` or `by 0x10A4A3: site_dropped
/// (reach.c:74)`.
fn frame_function(text: &str) -> Option<&str> {
    let rest = text
        .strip_prefix("at 0x")
        .or_else(|| text.strip_prefix("by 0x"))?;
    let (_, function) = rest.split_once(": ")?;
    Some(function.split(' ').next().unwrap_or(function))
}

/// Sums memcheck's loss records (vgdb's `leak_check` output, or valgrind's log at exit) per site:
/// the record's innermost frame whose function starts with `site_`, or [`NO_SITE`]. Fails on a
/// line that looks like a record but does not parse, or when the records are not exactly
/// "1 of Y" to "Y of Y".
pub fn parse_loss_records(text: &str) -> Result<BTreeMap<String, SiteClasses>, String> {
    let mut sites: BTreeMap<String, SiteClasses> = BTreeMap::new();
    // (bytes, blocks, class) of the record whose stack is being read, until its site is known.
    let mut open: Option<(u64, u64, &str)> = None;
    let mut records = Vec::new();
    let mut total = None;
    let mut close = |open: &mut Option<(u64, u64, &str)>, site: &str| {
        if let Some((bytes, blocks, class)) = open.take() {
            sites
                .entry(site.to_string())
                .or_default()
                .add(class, bytes, blocks);
        }
    };
    for line in text.lines() {
        // Strip valgrind's "==PID== " prefix.
        let body = match line.strip_prefix("==") {
            Some(rest) => rest.split_once("== ").map_or("", |(_, body)| body),
            None => line,
        }
        .trim();
        if body.contains(" in loss record ") {
            close(&mut open, NO_SITE);
            let (bytes, blocks, class, record, of) = parse_header(body)?;
            if *total.get_or_insert(of) != of {
                return Err(format!("loss record totals disagree at {body:?}"));
            }
            records.push(record);
            open = Some((bytes, blocks, class));
        } else if let Some(function) = frame_function(body) {
            if function.starts_with("site_") {
                close(&mut open, function);
            }
        } else if body.is_empty() {
            close(&mut open, NO_SITE);
        }
    }
    close(&mut open, NO_SITE);
    let expected: Vec<u64> = (1..=total.unwrap_or(0)).collect();
    if records != expected {
        return Err(format!(
            "loss records {records:?}, expected 1 to {}",
            total.unwrap_or(0)
        ));
    }
    Ok(sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vgdb's output for `leak_check full kinds all heuristics none any` on reach.c at "ready"
    /// (valgrind 3.19.0, Debian 12).
    const SAMPLE: &str = include_str!("../fixtures/vgdb_leak_check_reach.txt");

    fn classes(
        definitely: (u64, u64),
        indirectly: (u64, u64),
        possibly: (u64, u64),
        reachable: (u64, u64),
    ) -> SiteClasses {
        SiteClasses {
            definitely_lost: definitely,
            indirectly_lost: indirectly,
            possibly_lost: possibly,
            still_reachable: reachable,
        }
    }

    #[test]
    fn loss_records_are_summed_per_innermost_site() {
        let sites = parse_loss_records(SAMPLE).unwrap();
        let none = (0, 0);
        let expected: BTreeMap<String, SiteClasses> = [
            ("site_pre_holder", classes(none, none, none, (72, 1))),
            ("site_dropped", classes((100, 1), none, none, none)),
            // Three records: the head (its 272 indirect bytes not counted twice), two tails.
            ("site_list", classes((136, 1), (272, 2), none, none)),
            ("site_cycle", classes((168, 1), (168, 1), none, none)),
            ("site_global_array", classes(none, none, none, (800, 4))),
            ("site_global_list", classes(none, none, none, (696, 3))),
            ("site_tls_main", classes(none, none, none, (264, 1))),
            ("site_tls_thread", classes(none, none, none, (296, 1))),
            ("site_stack_local", classes(none, none, none, (328, 1))),
            ("site_interior", classes(none, none, (360, 1), none)),
            ("site_freed_holder", classes((392, 1), none, none, none)),
            ("site_via_pre_holder", classes(none, none, none, (456, 1))),
            ("site_vector_reg", classes((488, 1), none, none, none)),
            // The DTVs (calloc in pthread_create) and the two 4,096-byte stdio buffers.
            (NO_SITE, classes(none, none, (864, 3), (8192, 2))),
        ]
        .into_iter()
        .map(|(site, c)| (site.to_string(), c))
        .collect();
        assert_eq!(sites, expected);
    }

    #[test]
    fn headers_with_thousands_and_direct_indirect_split() {
        assert_eq!(
            parse_header(
                "1,408 (136 direct, 1,272 indirect) bytes in 1 blocks are definitely lost in loss record 12 of 19"
            ),
            Ok((136, 1, "definitely_lost", 12, 19))
        );
        assert_eq!(
            parse_header("4,096 bytes in 1,000 blocks are still reachable in loss record 18 of 19"),
            Ok((4096, 1000, "still_reachable", 18, 19))
        );
        assert!(parse_header("8 bytes in 1 blocks are misplaced in loss record 1 of 1").is_err());
    }

    #[test]
    fn missing_or_garbled_records_are_errors_not_silence() {
        // Record 2 of 2 is missing.
        let text = "==1== 8 bytes in 1 blocks are definitely lost in loss record 1 of 2\n\
                    ==1==    at 0x1: malloc (in vg.so)\n\
                    ==1==    by 0x2: site_a (a.c:1)\n==1== \n";
        assert!(parse_loss_records(text).is_err());
        let text = "==1== 8 bytes in one blocks are definitely lost in loss record 1 of 1\n";
        assert!(parse_loss_records(text).is_err());
        assert_eq!(parse_loss_records("no records here\n"), Ok(BTreeMap::new()));
    }
}
