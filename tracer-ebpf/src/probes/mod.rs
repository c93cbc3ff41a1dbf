//! The programs, one file per family. Each is declared with [`entry_program!`] or
//! [`return_program!`] from its entry in `tracer_common::programs`, which checks at compile
//! time that the symbol is the table's name and that the arguments read are the table's.

mod call_return;
mod ending;
mod exec;
mod free;
mod heap;
mod interpreter;
mod launch;
mod mapping;
mod pymalloc;
mod realloc;
mod syscalls;
mod threads;

use crate::maps::EMPTY_PROGRAMS;

const PAGE_SIZE: u64 = 4096;

/// True when the programs must do nothing (`--empty-programs`, for benchmarks).
#[inline(always)]
pub(crate) fn programs_are_empty() -> bool {
    EMPTY_PROGRAMS.load() != 0
}

/// Whether two strings are equal, at compile time.
pub(crate) const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Reads the arguments of an entry program, in the order its table entry lists them: each
/// index is a constant, so each read is one register load.
macro_rules! read_arguments {
    ($ctx:ident, $program:ident, $index:expr;) => {};
    ($ctx:ident, $program:ident, $index:expr; $arg:ident $(, $rest:ident)*) => {
        let $arg: u64 = $ctx.arg(const { $program.arguments[$index] }).unwrap_or(0);
        $crate::probes::read_arguments!($ctx, $program, $index + 1; $($rest),*);
    };
}

/// An entry program (a uprobe) from its `tracer_common::programs` entry: returns at once under
/// `--empty-programs`, else reads the listed arguments into the named variables and runs the
/// body (which may `return 0` early). With `traced tgid,` it first returns unless the caller is
/// traced (`current::traced_tgid`, bound to `tgid`): the arguments are read only then, so they
/// do not take registers across that check.
macro_rules! entry_program {
    (
        $(#[$doc:meta])*
        $name:ident = $program:path, $(traced $tgid:ident,)? |$ctx:ident $(, $arg:ident)*|
        { $($body:tt)* }
    ) => {
        $(#[$doc])*
        #[aya_ebpf::macros::uprobe]
        pub fn $name($ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            const PROGRAM: tracer_common::programs::Program = $program;
            const {
                assert!($crate::probes::same_name(PROGRAM.name, stringify!($name)));
                assert!(PROGRAM.arguments.len() == [$(stringify!($arg)),*].len());
            }
            if $crate::probes::programs_are_empty() {
                return 0;
            }
            $(
                let Some($tgid) = $crate::current::traced_tgid() else {
                    return 0;
                };
            )?
            $crate::probes::read_arguments!($ctx, PROGRAM, 0; $($arg),*);
            $($body)*
            0
        }
    };
}

/// The return program (a uretprobe) from its `tracer_common::programs` entry, as
/// [`entry_program!`] but reading no argument.
macro_rules! return_program {
    ($(#[$doc:meta])* $name:ident = $program:path, |$ctx:ident| { $($body:tt)* }) => {
        $(#[$doc])*
        #[aya_ebpf::macros::uretprobe]
        pub fn $name($ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
            const PROGRAM: tracer_common::programs::Program = $program;
            const {
                assert!($crate::probes::same_name(PROGRAM.name, stringify!($name)));
                assert!(PROGRAM.arguments.is_empty());
            }
            if $crate::probes::programs_are_empty() {
                return 0;
            }
            $($body)*
            0
        }
    };
}

use {entry_program, read_arguments, return_program};
