//! Allocator plumbing: which leading frames of a stack are the allocator's front end, or library
//! code on its way there, rather than code the user wrote. The text report, the folded stacks,
//! the flamegraph and the "top function" of summaries fold them, so the first frame a user
//! reads is their own; the JSON keeps every frame and marks these (`"plumbing": true`).
//!
//! The rule, by demangled function name, for the contiguous run of frames from frame 0 (the
//! innermost) up to the first frame that is not plumbing:
//!
//! - Rust's standard library: any path in the crates `alloc`, `core`, `std`, `hashbrown` (std's
//!   hash table) and `__rustc` (the allocator shims, e.g. `__rustc::__rust_alloc`), and the
//!   unmangled shims `__rust_alloc`, `__rdl_alloc`, `__rg_alloc` and their variants. Public
//!   methods the user called (`Vec::push`, `HashMap::insert`, `ToString::to_string`) fold too:
//!   the user's frame is their caller. A trait method `<Type as Trait>::method` belongs to
//!   `Type`'s crate when `Type` is a path (so `<myapp::Config as core::clone::Clone>::clone`, a
//!   derived `Clone`, is the user's), to `Trait`'s crate when `Type` is a primitive, slice,
//!   tuple or generic parameter (`<u32 as alloc::string::ToString>::to_string`), and to the
//!   standard library whatever `Type` is for the traits only it implements for others
//!   (`ToString`, `ToOwned`, `Into`, its specialization helpers) and for the allocator traits
//!   (`GlobalAlloc`, `Allocator`: a global allocator's or arena's `alloc` is plumbing by
//!   definition). An inherent method of a primitive or slice (`<[u8]>::to_vec_in`) can only be
//!   the standard library's.
//! - C++: `operator new` and `operator new[]` (any overload, global or a class's own), and the
//!   standard library's namespaces `std::` (libc++'s `std::__1::` included) and `__gnu_cxx::`:
//!   allocators, `allocator_traits`, containers (`std::vector<..>::_M_realloc_insert`,
//!   `push_back`), strings, `make_shared`. A return type the demangler prints first (`void
//!   std::vector<..>::_M_realloc_insert<..>(..)`) is skipped; a name the demangler gave up on is
//!   recognised by its mangled `std::` prefix (`_ZNSt`, `_ZSt`...).
//! - C: well-known allocation wrappers by exact name (a compiler clone suffix such as
//!   `.constprop.0` removed): libc's `strdup` family and its mapping system call wrappers
//!   (`mmap`, `mremap`, `mprotect`, `sbrk`, `syscall`), redis's `zmalloc` family, glib's `g_malloc`
//!   family and `g_slice_alloc`, the `xmalloc` family, OpenSSL's `CRYPTO_malloc` family.
//!   Application code that merely builds on them (redis's `_sdsnewlen`, which creates an sds
//!   string) is not plumbing: which kind of object leaks is worth reading. Names that merely
//!   contain "alloc" (`myapp::allocate_buffers`, `reallocate_pool`) are never plumbing.
//! - Go: the system call packages (`syscall.`, `runtime/internal/syscall.`,
//!   `internal/syscall/unix.`, `golang.org/x/sys/unix.`: `syscall.Mmap` down to the `SYSCALL`
//!   instruction) and the runtime's own mmap wrappers `runtime.sysMmap` and `runtime.mmap`, the
//!   counterparts of libc's wrappers.
//! - The user's own names (`--plumbing NAME`, a prefix when it ends in `*`).
//!
//! Frames without a symbol (`module+0xoffset`, `[unknown ...]`) are never plumbing: the run
//! stops there. The run never covers the whole stack: when every frame is plumbing (a stack
//! cut short inside the library, or all runtime code), the outermost frame is kept, so a report
//! always has a first frame to show, and it is the one furthest from the allocator.

use std::str::FromStr;

use super::{Frame, Report};

/// C allocation wrappers and Rust's unmangled allocator shims, by exact name.
const WRAPPERS: &[&str] = &[
    // Rust's allocator shims, as older toolchains name them (newer: `__rustc::...`).
    "__rust_alloc",
    "__rust_alloc_zeroed",
    "__rust_realloc",
    "__rdl_alloc",
    "__rdl_alloc_zeroed",
    "__rdl_realloc",
    "__rg_alloc",
    "__rg_alloc_zeroed",
    "__rg_realloc",
    // libc
    "strdup",
    "strndup",
    "__strdup",
    "__strndup",
    "reallocarray",
    // libc's system call wrappers: a mapping's stack starts at the `syscall` instruction
    "mmap",
    "mmap64",
    "__mmap",
    "__mmap64",
    "mremap",
    "__mremap",
    "mprotect",
    "__mprotect",
    "brk",
    "__brk",
    "__brk_call",
    "sbrk",
    "__sbrk",
    "syscall",
    // glibc's thread creation, up to `pthread_create`: a thread's stack is a mapping it opens
    "setup_stack_prot",
    "allocate_stack",
    // C++ runtime
    "__cxa_allocate_exception",
    "__cxa_allocate_dependent_exception",
    // redis
    "zmalloc",
    "zcalloc",
    "zrealloc",
    "zstrdup",
    "zmalloc_usable",
    "zcalloc_usable",
    "zrealloc_usable",
    "zmalloc_no_tcache",
    "zcalloc_num",
    "ztrymalloc",
    "ztrycalloc",
    "ztryrealloc",
    "ztrymalloc_usable",
    "ztrycalloc_usable",
    "ztryrealloc_usable",
    "ztrymalloc_usable_internal",
    "ztrycalloc_usable_internal",
    "ztryrealloc_usable_internal",
    // glib
    "g_malloc",
    "g_malloc0",
    "g_realloc",
    "g_try_malloc",
    "g_try_malloc0",
    "g_try_realloc",
    "g_malloc_n",
    "g_malloc0_n",
    "g_realloc_n",
    "g_try_malloc_n",
    "g_try_malloc0_n",
    "g_try_realloc_n",
    "g_slice_alloc",
    "g_slice_alloc0",
    "g_slice_copy",
    "g_strdup",
    "g_strndup",
    "g_memdup",
    "g_memdup2",
    // the xmalloc family (git, gnulib, binutils...)
    "xmalloc",
    "xcalloc",
    "xrealloc",
    "xstrdup",
    "xstrndup",
    "xzalloc",
    "xmemdup",
    "xmallocz",
    "do_xmalloc",
    // OpenSSL
    "CRYPTO_malloc",
    "CRYPTO_zalloc",
    "CRYPTO_realloc",
    "CRYPTO_clear_realloc",
    "CRYPTO_strdup",
    "CRYPTO_strndup",
    "CRYPTO_memdup",
];

/// Go's system call packages (a function name starts with the package path and a dot).
const GO_SYSCALL_PACKAGES: &[&str] = &[
    "syscall.",
    "runtime/internal/syscall.",
    "internal/syscall/unix.",
    "golang.org/x/sys/unix.",
];

/// The Go runtime's wrappers of the mmap system call.
const GO_RUNTIME_WRAPPERS: &[&str] = &["runtime.sysMmap", "runtime.mmap"];

/// The crates of Rust's standard library, its hash table and its allocator shims.
const RUST_CRATES: &[&str] = &["alloc", "core", "std", "hashbrown", "__rustc"];

/// Traits whose implementations for other crates' types are the standard library's own code
/// (blanket impls, private specialization helpers) or allocator code by definition. The last
/// segment of the trait's path, which must also be a standard-library path.
const LIBRARY_TRAITS: &[&str] = &[
    "ToString",
    "SpecToString",
    "ToOwned",
    "Into",
    "ConvertVec",
    "SpecExtend",
    "SpecFromElem",
    "SpecFromIter",
    "SpecFromIterNested",
    "SpecWriteFmt",
    "GlobalAlloc",
    "Allocator",
];

/// C++ standard-library namespaces.
const CPP_NAMESPACES: &[&str] = &["std::", "__gnu_cxx::"];

/// Mangled C++ standard-library names, for names the demangler could not read: `std::` nested
/// or not (and its abbreviations for `std::allocator` and `std::string`), `__gnu_cxx::`, and
/// `operator new`/`new[]` (64- and 32-bit size arguments).
const CPP_MANGLED: &[&str] = &[
    "_ZSt",
    "_ZNSt",
    "_ZNKSt",
    "_ZNSa",
    "_ZNKSa",
    "_ZNSs",
    "_ZNKSs",
    "_ZN9__gnu_cxx",
    "_ZNK9__gnu_cxx",
    "_Znwm",
    "_Znam",
    "_Znwj",
    "_Znaj",
];

/// A function the user names as plumbing (`--plumbing`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// This function.
    Exact(String),
    /// Every function whose name starts with this (given as `prefix*`).
    Prefix(String),
}

impl FromStr for Pattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(
                "give a function name as the report shows it, or a prefix ending in `*` (e.g. `my_alloc*`)"
                    .to_string(),
            );
        }
        match text.strip_suffix('*') {
            Some("") => Err(
                "`*` alone would fold every frame: give a function name or a prefix (e.g. `my_alloc*`)"
                    .to_string(),
            ),
            Some(prefix) => Ok(Self::Prefix(prefix.to_string())),
            None => Ok(Self::Exact(text.to_string())),
        }
    }
}

impl Pattern {
    /// Matches the name as the report shows it, or its function name alone: without a C++
    /// return type and parameter list (`Arena::alloc` matches `Arena::alloc(unsigned long)`),
    /// without a C clone suffix (`pool_get` matches `pool_get.constprop.0`).
    fn matches(&self, function: &str) -> bool {
        let key = key_of(function);
        match self {
            Self::Exact(name) => function == name || key == name,
            Self::Prefix(prefix) => function.starts_with(prefix) || key.starts_with(prefix),
        }
    }
}

/// What is folded: the built-in list and the user's names, or nothing (`--keep-plumbing`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plumbing {
    /// False with `--keep-plumbing`.
    fold: bool,
    /// `--plumbing` names, on top of the built-in list.
    extra: Vec<Pattern>,
}

impl Default for Plumbing {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Plumbing {
    /// The built-in list plus `extra`.
    pub fn new(extra: Vec<Pattern>) -> Self {
        Self { fold: true, extra }
    }

    /// `--keep-plumbing`: no frame is plumbing, every renderer shows every frame.
    pub fn keep_all() -> Self {
        Self {
            fold: false,
            extra: Vec::new(),
        }
    }

    /// True when frames of `function` are plumbing (see the module's rule).
    pub fn is_plumbing(&self, function: &str) -> bool {
        self.fold
            && !is_unsymbolized(function)
            && (is_builtin(function) || self.extra.iter().any(|p| p.matches(function)))
    }

    /// How many leading frames of `frames` (innermost first) are plumbing: the run from frame 0
    /// to the first frame that is not, never all of them (the outermost frame stays). A frame
    /// already marked (by the trace that recorded it) counts as plumbing, so a re-rendered
    /// recording keeps what its trace folded.
    pub fn leading(&self, frames: &[Frame]) -> usize {
        if !self.fold {
            return 0;
        }
        let run = frames
            .iter()
            .take_while(|f| f.plumbing || self.is_plumbing(&f.function))
            .count();
        run.min(frames.len().saturating_sub(1))
    }

    /// Marks the leading plumbing frames of `frames` (see [`Plumbing::leading`]) and clears
    /// every other mark.
    pub fn mark(&self, frames: &mut [Frame]) {
        let folded = self.leading(frames);
        for (index, frame) in frames.iter_mut().enumerate() {
            frame.plumbing = index < folded;
        }
    }

    /// Marks every stack of `report`.
    pub fn mark_report(&self, report: &mut Report) {
        for stack in &mut report.stacks {
            self.mark(&mut stack.frames);
        }
    }
}

/// A frame without a symbol: `module+0xoffset`, or `[unknown 0x...]`.
fn is_unsymbolized(function: &str) -> bool {
    function.starts_with('[') || function.contains("+0x")
}

/// True when the built-in rule calls `function` plumbing.
pub fn is_builtin(function: &str) -> bool {
    if let Some(name) = cpp_function(function) {
        return is_cpp_library(name);
    }
    if CPP_MANGLED.iter().any(|p| function.starts_with(p)) {
        return true;
    }
    let name = c_name(function);
    // glibc calls its own functions through hidden aliases (`__GI_mprotect`, `__GI___sbrk`).
    let name = name.strip_prefix("__GI_").unwrap_or(name);
    WRAPPERS.contains(&name) || is_rust_library(function) || is_go_syscall(function)
}

/// Go's system call wrappers (see [`GO_SYSCALL_PACKAGES`], [`GO_RUNTIME_WRAPPERS`]).
fn is_go_syscall(function: &str) -> bool {
    GO_RUNTIME_WRAPPERS.contains(&function)
        || GO_SYSCALL_PACKAGES.iter().any(|p| function.starts_with(p))
}

/// The name patterns are compared with besides the full name: a C++ function without return
/// type and parameters, a C function without clone suffix, anything else as it is.
fn key_of(function: &str) -> &str {
    cpp_function(function).unwrap_or_else(|| c_name(function))
}

/// The suffixes GCC and LLVM give the clones they make of a function (`f.constprop.0`).
const CLONE_SUFFIXES: &[&str] = &[
    "constprop",
    "isra",
    "part",
    "cold",
    "lto_priv",
    "localalias",
    "clone",
    "llvm",
];

/// A C function's name without the suffix of a compiler-made clone (`zmalloc.constprop.0`,
/// `f.isra.0`, `f.part.1`, `f.cold`); any other name as it is.
fn c_name(function: &str) -> &str {
    let Some((name, suffix)) = function.split_once('.') else {
        return function;
    };
    let identifier =
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let clone = CLONE_SUFFIXES.contains(&suffix.split('.').next().unwrap_or_default());
    if identifier && clone { name } else { function }
}

// --- C++ ---------------------------------------------------------------------------------

/// The qualified name of a demangled C++ function (`std::vector<int>::push_back` of `void
/// std::vector<int>::push_back(int const&) const [clone .cold]`); `None` when the name is not
/// one (C++ names end in their parameter list, Rust and C names never do).
fn cpp_function(function: &str) -> Option<&str> {
    let mut end = function.trim_end();
    loop {
        let before = end.len();
        if end.ends_with(']')
            && let Some(at) = end.rfind(" [clone ")
        {
            end = end[..at].trim_end();
        }
        for qualifier in [" const", " volatile", " &&", " &", " noexcept"] {
            if let Some(rest) = end.strip_suffix(qualifier) {
                end = rest;
            }
        }
        if end.len() == before {
            break;
        }
    }
    if !end.ends_with(')') {
        return None;
    }
    // The parameter list is the group the last parenthesis closes.
    let mut depth = 0usize;
    let mut open = None;
    for (at, byte) in end.bytes().enumerate().rev() {
        match byte {
            b')' => depth += 1,
            b'(' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    open = Some(at);
                    break;
                }
            }
            _ => {}
        }
    }
    let head = &end[..open?];
    Some(&head[cpp_name_start(head)..])
}

/// Where the qualified name starts in `head` (a C++ name without its parameters): after the
/// last space outside brackets, i.e. past a return type; an operator's name (`operator new`,
/// `operator<< <..>`) is kept whole.
fn cpp_name_start(head: &str) -> usize {
    let bytes = head.as_bytes();
    let mut depth = 0i32;
    let mut start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        if depth == 0 && is_operator_keyword(head, at) {
            return start;
        }
        match byte {
            b'<' | b'(' | b'[' | b'{' => depth += 1,
            b'>' | b')' | b']' | b'}' => depth -= 1,
            b' ' if depth == 0 => start = at + 1,
            _ => {}
        }
    }
    start
}

/// True when the keyword `operator` starts at `at` (not an identifier such as `operator_id`).
fn is_operator_keyword(head: &str, at: usize) -> bool {
    let bytes = head.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    head[at..].starts_with("operator")
        && (at == 0 || !ident(bytes[at - 1]))
        && bytes.get(at + "operator".len()).is_none_or(|&b| !ident(b))
}

/// A qualified C++ function name of the standard library, or an `operator new`.
fn is_cpp_library(name: &str) -> bool {
    let last = name.rsplit("::").next().unwrap_or(name);
    last == "operator new"
        || last == "operator new[]"
        || CPP_NAMESPACES.iter().any(|ns| name.starts_with(ns))
}

// --- Rust --------------------------------------------------------------------------------

/// A demangled Rust path (or qualified path `<Type as Trait>::...`) of the standard library.
fn is_rust_library(path: &str) -> bool {
    if path.starts_with('<') {
        return is_rust_library_qualified(path);
    }
    let Some((krate, _)) = path.split_once("::") else {
        return false;
    };
    !krate.contains(['<', ' ']) && RUST_CRATES.contains(&krate)
}

/// `<Type as Trait>::rest` or `<Type>::rest`: whose code it is (see the module's rule).
fn is_rust_library_qualified(path: &str) -> bool {
    let Some(close) = closing_angle(path, 0) else {
        return false;
    };
    let (self_type, trait_path) = split_as(&path[1..close]);
    let self_type = strip_pointers(self_type);
    if let Some(trait_path) = trait_path
        && is_rust_library(trait_path)
        && LIBRARY_TRAITS.contains(&last_segment(trait_path))
    {
        return true;
    }
    if is_rust_path(self_type) {
        return is_rust_library(self_type);
    }
    // A primitive, slice, array, tuple, fn pointer or generic parameter: the impl is the
    // trait's crate's, and an inherent impl on such a type only the standard library's.
    trait_path.is_none_or(is_rust_library)
}

/// The index of the `>` that closes the `<` at `open` (the `>` of a `->` does not count).
fn closing_angle(text: &str, open: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    for at in open..bytes.len() {
        match bytes[at] {
            b'<' => depth += 1,
            b'>' if at > 0 && bytes[at - 1] == b'-' => {}
            b'>' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits `Type as Trait` at its top-level ` as `; `(Type, None)` for an inherent `<Type>`.
fn split_as(inner: &str) -> (&str, Option<&str>) {
    let bytes = inner.as_bytes();
    let mut depth = 0i32;
    for at in 0..bytes.len() {
        match bytes[at] {
            b'<' | b'(' | b'[' => depth += 1,
            b'>' if at > 0 && bytes[at - 1] == b'-' => {}
            b'>' | b')' | b']' => depth -= 1,
            b' ' if depth == 0 && inner[at..].starts_with(" as ") => {
                return (&inner[..at], Some(&inner[at + " as ".len()..]));
            }
            _ => {}
        }
    }
    (inner, None)
}

/// A type without the references, raw pointers and `dyn` around it: `&mut alloc::string::String`
/// is `alloc::string::String`.
fn strip_pointers(mut ty: &str) -> &str {
    loop {
        let before = ty.len();
        for prefix in ["&", "mut ", "*const ", "*mut ", "dyn "] {
            if let Some(rest) = ty.strip_prefix(prefix) {
                ty = rest;
            }
        }
        // A lifetime after `&`: `&'a T`.
        if let Some(rest) = ty.strip_prefix('\'') {
            ty = rest.split_once(' ').map_or("", |(_, t)| t);
        }
        if ty.len() == before {
            return ty;
        }
    }
}

/// True when `ty` names a type by path (`alloc::vec::Vec<T>`, `<X as Y>::Z`), not a primitive,
/// slice, tuple, fn pointer or generic parameter.
fn is_rust_path(ty: &str) -> bool {
    let ident = ty
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(ty.len());
    ty.starts_with('<') || (ident > 0 && ty[ident..].starts_with("::"))
}

/// The last segment of a path, without its generic arguments: `Into` of
/// `core::convert::Into<myapp::Id>`.
fn last_segment(path: &str) -> &str {
    let mut path = path;
    if path.ends_with('>') {
        // Cut the trailing `<...>`: find its opening bracket from the end.
        let bytes = path.as_bytes();
        let mut depth = 0usize;
        for at in (0..bytes.len()).rev() {
            match bytes[at] {
                b'>' if at > 0 && bytes[at - 1] == b'-' => {}
                b'>' => depth += 1,
                b'<' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        path = &path[..at];
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    path.rsplit("::").next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(names: &[&str]) -> Vec<Frame> {
        names
            .iter()
            .map(|name| Frame {
                function: name.to_string(),
                module: "/bin/app".into(),
                ..Default::default()
            })
            .collect()
    }

    fn folded(plumbing: &Plumbing, names: &[&str]) -> usize {
        plumbing.leading(&frames(names))
    }

    /// A Rust release build's stacks, as blazesym names them (std in v0 mangling, generic
    /// code instantiated in the user's crate in legacy mangling): `Vec::push` growing,
    /// `u32::to_string`, `format!` and `HashMap::insert`.
    #[test]
    fn rust_std_frames_fold_to_the_users_caller() {
        let plumbing = Plumbing::default();
        let push = [
            "alloc::alloc::alloc",
            "<alloc::alloc::Global>::alloc_impl_runtime",
            "<alloc::alloc::Global>::alloc_impl",
            "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
            "<alloc::raw_vec::RawVecInner>::finish_grow",
            "<alloc::raw_vec::RawVecInner>::grow_amortized",
            "<alloc::raw_vec::RawVecInner>::grow_one",
            "<alloc::raw_vec::RawVec<alloc::vec::Vec<u8>>>::grow_one",
            "alloc::vec::Vec<T,A>::push_mut",
            "alloc::vec::Vec<T,A>::push",
            "myapp::cache::remember",
            "myapp::main",
        ];
        assert_eq!(folded(&plumbing, &push), 10);
        let older = [
            "__rust_alloc",
            "alloc::raw_vec::finish_grow",
            "alloc::raw_vec::RawVecInner<A>::reserve::do_reserve_and_handle",
            "alloc::raw_vec::RawVec<T,A>::grow_one",
            "myapp::cache::remember",
            "myapp::main",
            "std::rt::lang_start_internal",
            "main",
        ];
        assert_eq!(folded(&plumbing, &older), 4);
        let to_string = [
            "alloc::alloc::alloc",
            "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
            "alloc::raw_vec::RawVecInner<A>::try_allocate_in",
            "alloc::raw_vec::RawVec<T,A>::with_capacity_in",
            "alloc::vec::Vec<T,A>::with_capacity_in",
            "<T as alloc::slice::<impl [T]>::to_vec_in::ConvertVec>::to_vec",
            "alloc::slice::<impl [T]>::to_vec_in",
            "alloc::slice::<impl alloc::borrow::ToOwned for [T]>::to_owned",
            "<str as alloc::borrow::ToOwned>::to_owned",
            "<alloc::string::String as core::convert::From<&str>>::from",
            "<str as alloc::string::SpecToString>::spec_to_string",
            "<T as alloc::string::ToString>::to_string",
            "<u32 as alloc::string::SpecToString>::spec_to_string",
            "<u8 as <[_]>::to_vec_in::ConvertVec>::to_vec::<alloc::alloc::Global>",
            "<[u8]>::to_vec_in::<alloc::alloc::Global>",
            "a::remember",
            "a::main",
        ];
        assert_eq!(folded(&plumbing, &to_string), 15);
        let format = [
            "<alloc::raw_vec::RawVecInner<_>>::reserve::do_reserve_and_handle::<alloc::alloc::Global>",
            "<alloc::vec::Vec<u8> as alloc::vec::spec_extend::SpecExtend<&u8, core::slice::iter::Iter<u8>>>::spec_extend",
            "<alloc::string::String>::push_str",
            "<alloc::string::String as core::fmt::Write>::write_str",
            "<u32 as core::fmt::Display>::fmt",
            "<core::fmt::rt::Argument>::fmt",
            "core::fmt::write",
            "<&mut alloc::string::String as core::fmt::Write::write_fmt::SpecWriteFmt>::spec_write_fmt",
            "alloc::fmt::format::format_inner",
            "alloc::fmt::format::{{closure}}",
            "core::option::Option<T>::map_or_else",
            "alloc::fmt::format",
            "a::remember",
        ];
        assert_eq!(folded(&plumbing, &format), 12);
        let insert = [
            "hashbrown::raw::alloc::inner::do_alloc",
            "hashbrown::raw::RawTableInner::fallible_with_capacity",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "hashbrown::map::HashMap<K,V,S,A>::insert",
            "std::collections::hash::map::HashMap<K,V,S,A>::insert",
            "a::remember",
        ];
        assert_eq!(folded(&plumbing, &insert), 5);
        let shims = [
            "__rustc::__rdl_alloc",
            "__rustc::__rust_alloc",
            "<std::alloc::System as core::alloc::global::GlobalAlloc>::alloc",
            "alloc::alloc::exchange_malloc",
            "myapp::Node::boxed",
        ];
        assert_eq!(folded(&plumbing, &shims), 4);
    }

    #[test]
    fn a_trait_impl_belongs_to_its_type_unless_only_std_implements_the_trait() {
        for (name, plumbing) in [
            ("<alloc::vec::Vec<T,A> as core::clone::Clone>::clone", true),
            ("<alloc::string::String as core::clone::Clone>::clone", true),
            ("<myapp::Config as core::clone::Clone>::clone", false),
            ("<&myapp::Config as core::fmt::Display>::fmt", false),
            ("<myapp::Id as alloc::string::ToString>::to_string", true),
            ("<myapp::Id as core::convert::Into<myapp::Key>>::into", true),
            (
                "<mimalloc::MiMalloc as core::alloc::global::GlobalAlloc>::alloc",
                true,
            ),
            ("<&bumpalo::Bump as core::alloc::Allocator>::allocate", true),
            ("<myapp::Pool as myapp::Allocator>::allocate", false),
            ("<[myapp::Item]>::to_vec_in::<alloc::alloc::Global>", true),
            ("<(A, B) as core::clone::Clone>::clone", true),
            (
                "<fn() -> u8 as core::ops::function::FnOnce<()>>::call_once",
                true,
            ),
            (
                "<myapp::main::{closure#0} as core::ops::function::FnOnce<()>>::call_once",
                false,
            ),
            ("<dyn core::any::Any>::downcast_ref::<u8>", true),
            ("<myapp::Cache<alloc::string::String>>::insert", false),
        ] {
            assert_eq!(is_builtin(name), plumbing, "{name}");
        }
    }

    #[test]
    fn redis_folds_its_allocator_not_its_strings() {
        let stack = [
            "ztrymalloc_usable_internal",
            "zmalloc_usable",
            "_sdsnewlen",
            "sdsnewlen",
            "createStringObject",
            "processCommand",
        ];
        assert_eq!(folded(&Plumbing::default(), &stack[1..]), 1);
        assert_eq!(folded(&Plumbing::default(), &stack), 2);
        // A compiler-made clone of a wrapper is the wrapper; a dotted name that is no clone is
        // not.
        for (frame0, folds) in [
            ("zmalloc.constprop.0", 1),
            ("xmalloc.cold", 1),
            ("zmalloc.mine", 0),
        ] {
            assert_eq!(
                folded(&Plumbing::default(), &[frame0, "dictAdd"]),
                folds,
                "{frame0}"
            );
        }
    }

    #[test]
    fn c_wrappers_of_every_family_fold() {
        for wrapper in [
            "g_malloc0",
            "g_slice_alloc",
            "xstrdup",
            "strndup",
            "__strdup",
            "CRYPTO_zalloc",
            "ztrycalloc_usable",
        ] {
            assert_eq!(
                folded(&Plumbing::default(), &[wrapper, "user_code"]),
                1,
                "{wrapper}"
            );
        }
    }

    /// A Go stack from `syscall.Mmap` (as the e2e Go workload records it): the system call
    /// packages fold to the user's function; a runtime function that maps is not a wrapper.
    #[test]
    fn go_system_call_wrappers_fold() {
        let stack = [
            "runtime/internal/syscall.Syscall6",
            "syscall.RawSyscall6",
            "syscall.Syscall6",
            "syscall.mmap",
            "syscall.(*mmapper).Mmap",
            "syscall.Mmap",
            "main.mapFive",
            "main.main",
        ];
        assert_eq!(folded(&Plumbing::default(), &stack), 6);
        let heap = [
            "runtime.sysMmap",
            "runtime.mmap",
            "runtime.sysMapOS",
            "runtime.sysMap",
        ];
        assert_eq!(folded(&Plumbing::default(), &heap), 2);
        for name in ["mysyscall.Mmap", "main.syscall", "runtime.mmapper"] {
            assert!(!is_builtin(name), "{name}");
        }
    }

    /// cpp_demangle's spelling: arguments, `> >`, a return type before template functions.
    #[test]
    fn cpp_new_allocators_and_containers_fold() {
        let stack = [
            "operator new(unsigned long)",
            "std::__new_allocator<int>::allocate(unsigned long, void const*)",
            "std::allocator_traits<std::allocator<int> >::allocate(std::allocator<int>&, unsigned long)",
            "std::_Vector_base<int, std::allocator<int> >::_M_allocate(unsigned long)",
            "void std::vector<int, std::allocator<int> >::_M_realloc_insert<int const&>(__gnu_cxx::__normal_iterator<int*, std::vector<int, std::allocator<int> > >, int const&)",
            "std::vector<int, std::allocator<int> >::push_back(int const&)",
            "myapp::remember(std::vector<int, std::allocator<int> >&, int)",
            "main",
        ];
        assert_eq!(folded(&Plumbing::default(), &stack), 6);
        for (name, plumbing) in [
            ("operator new[](unsigned long)", true),
            ("operator new(unsigned long, std::nothrow_t const&)", true),
            ("operator new(unsigned long, std::align_val_t)", true),
            ("myapp::Arena::operator new(unsigned long)", true),
            (
                "__gnu_cxx::new_allocator<char>::allocate(unsigned long, void const*)",
                true,
            ),
            (
                "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >::_M_construct(unsigned long, char)",
                true,
            ),
            (
                "std::__1::vector<int, std::__1::allocator<int> >::__push_back_slow_path<int const&>(int const&)",
                true,
            ),
            (
                "std::__detail::_Hash_node<int, false>* std::__detail::_Hashtable_alloc<std::allocator<std::__detail::_Hash_node<int, false> > >::_M_allocate_node<int const&>(int const&)",
                true,
            ),
            (
                "std::basic_ostream<char, std::char_traits<char> >& std::operator<< <std::char_traits<char> >(std::basic_ostream<char, std::char_traits<char> >&, char const*)",
                true,
            ),
            (
                "_ZSt11make_sharedIN5myapp4ItemEJEESt10shared_ptrIT_EDpOT0_",
                true,
            ),
            // The user's code, even returning a std type, in a namespace named like Rust's
            // crates, or cloned by the compiler.
            (
                "std::vector<int, std::allocator<int> > myapp::make_list<int>(int)",
                false,
            ),
            ("core::Engine::allocate(unsigned long)", false),
            ("alloc::Pool::get(int) const", false),
            ("myapp::remember(int) [clone .cold]", false),
            (
                "(anonymous namespace)::fill(std::vector<int, std::allocator<int> >&)",
                false,
            ),
            ("myapp::Pool::operator()(unsigned long)", false),
        ] {
            assert_eq!(is_builtin(name), plumbing, "{name}");
        }
    }

    #[test]
    fn names_that_merely_contain_alloc_are_the_users() {
        for name in [
            "myapp::allocate_buffers",
            "reallocate_pool",
            "alloc_utils::arena::grow",
            "my_malloc",
            "malloc_trim_helper",
            "zmalloc_wrapper_of_mine",
            "libc.so.6+0x9a3f0",
            "[unknown 0x7f00deadbeef]",
            "main",
        ] {
            assert!(!is_builtin(name), "{name}");
            assert_eq!(folded(&Plumbing::default(), &[name, "main"]), 0, "{name}");
        }
    }

    #[test]
    fn the_run_stops_at_the_first_own_frame() {
        let stack = [
            "g_malloc",
            "myapp::fill",
            "alloc::vec::Vec<T,A>::push",
            "main",
        ];
        assert_eq!(folded(&Plumbing::default(), &stack), 1);
        let unknown = ["g_malloc", "libfoo.so+0x1234", "g_malloc", "main"];
        assert_eq!(folded(&Plumbing::default(), &unknown), 1);
    }

    #[test]
    fn a_stack_of_only_plumbing_keeps_its_outermost_frame() {
        let stack = [
            "__rust_alloc",
            "alloc::raw_vec::finish_grow",
            "alloc::vec::Vec<T,A>::push",
        ];
        assert_eq!(folded(&Plumbing::default(), &stack), 2);
        assert_eq!(folded(&Plumbing::default(), &["xmalloc"]), 0);
        assert_eq!(folded(&Plumbing::default(), &[]), 0);
    }

    #[test]
    fn user_names_and_prefixes_fold_too() {
        let stack = [
            "my_alloc_slab",
            "my_alloc",
            "Arena::alloc(unsigned long)",
            "pool_get.constprop.0",
            "handle_request",
        ];
        assert_eq!(folded(&Plumbing::default(), &stack), 0);
        let patterns: Vec<Pattern> = ["my_alloc*", "Arena::alloc", "pool_get"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(folded(&Plumbing::new(patterns), &stack), 4);
        let exact = Plumbing::new(vec!["my_alloc".parse().unwrap()]);
        assert_eq!(folded(&exact, &stack), 0, "exact: not a prefix");
        assert_eq!(folded(&exact, &stack[1..]), 1);
    }

    #[test]
    fn patterns_parse_or_say_what_they_want() {
        assert_eq!(
            "my_alloc*".parse::<Pattern>(),
            Ok(Pattern::Prefix("my_alloc".into()))
        );
        assert_eq!(
            " zmalloc_usable ".parse::<Pattern>(),
            Ok(Pattern::Exact("zmalloc_usable".into()))
        );
        assert!(
            "".parse::<Pattern>()
                .unwrap_err()
                .contains("prefix ending in `*`")
        );
        assert!("*".parse::<Pattern>().unwrap_err().contains("every frame"));
    }

    #[test]
    fn keep_all_folds_nothing_and_clears_marks() {
        let mut stack = frames(&["zmalloc_usable", "_sdsnewlen", "main"]);
        Plumbing::default().mark(&mut stack);
        let marks: Vec<bool> = stack.iter().map(|f| f.plumbing).collect();
        assert_eq!(marks, [true, false, false]);
        assert_eq!(Plumbing::keep_all().leading(&stack), 0);
        Plumbing::keep_all().mark(&mut stack);
        assert!(stack.iter().all(|f| !f.plumbing));
    }

    #[test]
    fn recorded_marks_are_kept_when_marking_again() {
        // A trace with `--plumbing my_alloc` recorded this; re-rendered without the flag.
        let mut stack = frames(&["my_alloc", "g_malloc", "handle", "main"]);
        stack[0].plumbing = true;
        Plumbing::default().mark(&mut stack);
        let marks: Vec<bool> = stack.iter().map(|f| f.plumbing).collect();
        assert_eq!(marks, [true, true, false, false]);
    }
}
