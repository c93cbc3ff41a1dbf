//! Language runtimes: the interpreters whose frames the kernel walks beside the native ones and
//! leaktracer names (CPython). Modelled on the OpenTelemetry eBPF profiler's `interpreter/`
//! folder: a runtime recognises itself in a process, gives the kernel what its walker needs,
//! reads and forgets the stacks the kernel announces, names its frames, detaches, and says how
//! reports treat its frames.
//!
//! - [`runtime`]: the [`Runtime`] trait, the report [`Rules`], and the types they speak;
//! - [`allocator_table`]: a runtime's allocator called through a table of function pointers,
//!   found where no symbol names its functions, and the table's redirect while traced;
//! - [`python`]: CPython 3.11-3.13.
//!
//! This file is the registry: the one place outside a runtime's own folder that names it. A
//! runtime is its folder and one entry of [`KNOWN`]; the rest of leaktracer speaks of runtimes
//! by [`RuntimeId`] and through [`Runtimes`].

pub mod allocator_table;
pub mod python;
mod runtime;

use std::{collections::BTreeSet, os::fd::RawFd};

use allocator_table::{Located, ObjectView};

pub use runtime::{
    EntryFamily, Merged, NativeFrame, Rules, Runtime, RuntimeFrame, RuntimesError, TakeMap,
    take_map,
};

/// A runtime leaktracer knows.
struct Known {
    /// How reports treat its frames.
    rules: &'static dyn Rules,
    /// What to probe for it, in every traced process.
    entry_families: fn() -> Vec<EntryFamily>,
    /// Its allocator where it calls it through a table (no symbol needed): looked for in the
    /// objects that export `allocator_marker`.
    allocator_marker: &'static str,
    locate_allocator: fn(&ObjectView) -> Option<Located>,
    /// Sets it up for a trace, with its kernel maps.
    load: fn(&mut TakeMap) -> Result<Box<dyn Runtime>, RuntimesError>,
}

/// Every runtime, in the order they are looked for in a process. A runtime's id is its place
/// here, from 1 (0 is native code).
static KNOWN: [Known; 1] = [Known {
    rules: &python::RULES,
    entry_families: python::entry_families,
    allocator_marker: python::allocators::MARKER,
    locate_allocator: python::allocators::locate,
    load: python::Python::load,
}];

/// `kind` of a native frame in JSON.
const NATIVE_NAME: &str = "native";

/// What runs a frame: native code, or a runtime (its place in `KNOWN`, from 1). Frames carry
/// it; JSON says its name (`"kind": "python"`, `"native"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuntimeId(u8);

impl RuntimeId {
    pub const NATIVE: Self = Self(0);

    pub fn is_native(self) -> bool {
        self == Self::NATIVE
    }

    /// How reports treat the frames of its runtime; `None` for native code.
    pub fn rules(self) -> Option<&'static dyn Rules> {
        let index = usize::from(self.0).checked_sub(1)?;
        KNOWN.get(index).map(|known| known.rules)
    }

    /// As JSON says it.
    pub fn name(self) -> &'static str {
        self.rules().map_or(NATIVE_NAME, |rules| rules.name())
    }

    /// The id JSON names `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        if name == NATIVE_NAME {
            return Some(Self::NATIVE);
        }
        let index = KNOWN.iter().position(|known| known.rules.name() == name)?;
        Some(Self(index as u8 + 1))
    }

    fn of_index(index: usize) -> Self {
        Self(index as u8 + 1)
    }
}

impl serde::Serialize for RuntimeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for RuntimeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RuntimeId;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a frame kind")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<RuntimeId, E> {
                RuntimeId::from_name(name).ok_or_else(|| {
                    let names: Vec<String> = std::iter::once(NATIVE_NAME)
                        .chain(KNOWN.iter().map(|known| known.rules.name()))
                        .map(|name| format!("`{name}`"))
                        .collect();
                    let expected = match names.as_slice() {
                        [one, other] => format!("{one} or {other}"),
                        _ => format!("one of {}", names.join(", ")),
                    };
                    E::custom(format_args!(
                        "unknown variant `{name}`, expected {expected}"
                    ))
                })
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// The standard libraries the text report leaves out, as a sentence says them ("Python's
/// standard library").
pub fn standard_libraries() -> String {
    let owners: Vec<String> = KNOWN
        .iter()
        .map(|known| format!("{}'s", known.rules.title()))
        .collect();
    format!("{} standard library", owners.join(" or "))
}

/// The runtimes of a trace, each with its kernel maps and the processes it runs in.
pub struct Runtimes {
    runtimes: Vec<(RuntimeId, Box<dyn Runtime>)>,
    /// Processes (images) already looked at.
    checked: BTreeSet<u32>,
}

impl Runtimes {
    /// Sets up every runtime, taking its maps out of the loaded eBPF object.
    pub fn load(take: &mut TakeMap) -> Result<Self, RuntimesError> {
        let mut runtimes = Vec::with_capacity(KNOWN.len());
        for (index, known) in KNOWN.iter().enumerate() {
            runtimes.push((RuntimeId::of_index(index), (known.load)(take)?));
        }
        Ok(Self {
            runtimes,
            checked: BTreeSet::new(),
        })
    }

    /// What every runtime wants probed, wherever it is defined.
    pub fn entry_families() -> Vec<EntryFamily> {
        KNOWN
            .iter()
            .flat_map(|known| (known.entry_families)())
            .collect()
    }

    /// The symbols whose objects hold a runtime's allocator table.
    pub fn allocator_markers() -> Vec<&'static str> {
        KNOWN.iter().map(|known| known.allocator_marker).collect()
    }

    /// The allocator a runtime calls through a table in `object`, its functions found by
    /// their addresses there (see [`crate::runtimes::allocator_table`]).
    pub fn locate_allocator(object: &ObjectView) -> Option<Located> {
        KNOWN
            .iter()
            .find_map(|known| (known.locate_allocator)(object))
    }

    /// Looks for a runtime in `pid`, once per image: the kernel walks the frames of the one
    /// found from now on.
    pub fn attach(&mut self, pid: u32, verbose: bool) {
        if !self.checked.insert(pid) {
            return;
        }
        for (_, runtime) in &mut self.runtimes {
            if runtime.attach(pid, verbose) {
                return;
            }
        }
    }

    /// `pid` exec'd: its runtime, if any, is forgotten, and its new image looked at afresh.
    pub fn forget(&mut self, pid: u32) {
        for (_, runtime) in &mut self.runtimes {
            runtime.detach(pid);
        }
        self.checked.remove(&pid);
    }

    /// The descriptors that turn readable when the kernel announces new stacks with a
    /// runtime's frames (see [`Runtimes::read_new_stacks`]).
    pub fn announcements(&self) -> Vec<RawFd> {
        self.runtimes
            .iter()
            .filter_map(|(_, runtime)| runtime.announcements())
            .collect()
    }

    /// Names the runtime frames of the stacks the kernel announced since the last call, while
    /// what names them exists (`stack`: a stack id's entries).
    pub fn read_new_stacks(&mut self, stack: &mut dyn FnMut(u64) -> Vec<u64>) {
        for (_, runtime) in &mut self.runtimes {
            runtime.read_new_stacks(stack);
        }
    }

    /// Whether a stack entry is a runtime's frame (not a native return address).
    pub fn is_frame_entry(&self, ip: u64) -> bool {
        self.runtimes
            .iter()
            .any(|(_, runtime)| runtime.is_frame_entry(ip))
    }

    /// The stack `stack_id` of `pid` (its entries `ips`) with the frames of the runtime that has
    /// entries in it in place of the native frames that ran them (`native`, symbolized); `None`
    /// when it has none.
    pub fn merge(
        &mut self,
        pid: u32,
        stack_id: u64,
        ips: &[u64],
        native: &[NativeFrame],
    ) -> Option<(RuntimeId, Vec<Merged>)> {
        let (id, runtime) = self
            .runtimes
            .iter_mut()
            .find(|(_, runtime)| ips.iter().any(|ip| runtime.is_frame_entry(*ip)))?;
        Some((*id, runtime.merge(pid, stack_id, ips, native)))
    }

    /// Where the kernel froze `pid`'s picture and stopped it, when a runtime runs in it (its
    /// teardown: `Py_FinalizeEx`).
    pub fn teardown_of(&self, pid: u32) -> Option<&'static str> {
        self.runtimes
            .iter()
            .find(|(_, runtime)| runtime.runs_in(pid))
            .and_then(|(_, runtime)| runtime.teardown())
    }

    /// Why a reachability scan of `pid` says nothing, when a runtime runs in it.
    pub fn reachability_note(&self, pid: u32) -> Option<String> {
        self.runtimes
            .iter()
            .find_map(|(_, runtime)| runtime.reachability_note(pid))
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;

    /// A runtime that runs in pid 7 and marks its frame entries with the top bit; it records
    /// what the registry asks of it.
    struct Recorder {
        attached: Rc<RefCell<Vec<u32>>>,
    }

    const ENTRY: u64 = 1 << 63;

    impl Runtime for Recorder {
        fn attach(&mut self, pid: u32, _verbose: bool) -> bool {
            self.attached.borrow_mut().push(pid);
            pid == 7
        }
        fn detach(&mut self, _pid: u32) {}
        fn runs_in(&self, pid: u32) -> bool {
            pid == 7
        }
        fn announcements(&self) -> Option<RawFd> {
            None
        }
        fn read_new_stacks(&mut self, _stack: &mut dyn FnMut(u64) -> Vec<u64>) {}
        fn is_frame_entry(&self, ip: u64) -> bool {
            ip & ENTRY != 0
        }
        fn merge(&mut self, _: u32, _: u64, ips: &[u64], native: &[NativeFrame]) -> Vec<Merged> {
            let runtime = ips.iter().filter(|ip| self.is_frame_entry(**ip)).map(|ip| {
                Merged::Runtime(RuntimeFrame {
                    address: ip & !ENTRY,
                    ..RuntimeFrame::default()
                })
            });
            (0..native.len())
                .map(Merged::Native)
                .chain(runtime)
                .collect()
        }
        fn teardown(&self) -> Option<&'static str> {
            Some("teardown")
        }
        fn reachability_note(&self, pid: u32) -> Option<String> {
            self.runs_in(pid)
                .then(|| format!("pid {pid} is interpreted"))
        }
    }

    #[test]
    fn the_registry_looks_once_per_image_and_asks_the_runtime_that_owns_a_stack() {
        let attached = Rc::new(RefCell::new(Vec::new()));
        let id = RuntimeId::of_index(0);
        let mut runtimes = Runtimes {
            runtimes: vec![(
                id,
                Box::new(Recorder {
                    attached: attached.clone(),
                }),
            )],
            checked: BTreeSet::new(),
        };
        for pid in [7, 7, 8, 7] {
            runtimes.attach(pid, false);
        }
        assert_eq!(*attached.borrow(), [7, 8], "once per process");
        // An exec: its new image is looked at again.
        runtimes.forget(7);
        runtimes.attach(7, false);
        assert_eq!(*attached.borrow(), [7, 8, 7]);

        let native = [NativeFrame {
            function: "malloc",
            inlined: false,
            address: 0x1000,
        }];
        assert_eq!(runtimes.merge(7, 1, &[0x1000], &native), None);
        assert!(!runtimes.is_frame_entry(0x1000) && runtimes.is_frame_entry(ENTRY | 0x20));
        let (kind, plan) = runtimes
            .merge(7, 1, &[0x1000, ENTRY | 0x20], &native)
            .expect("a stack with the runtime's entries");
        assert_eq!(kind, id);
        assert_eq!(
            plan,
            [
                Merged::Native(0),
                Merged::Runtime(RuntimeFrame {
                    address: 0x20,
                    ..RuntimeFrame::default()
                })
            ]
        );
        assert_eq!(runtimes.teardown_of(7), Some("teardown"));
        assert_eq!(runtimes.teardown_of(8), None);
        assert_eq!(
            runtimes.reachability_note(7).as_deref(),
            Some("pid 7 is interpreted")
        );
        assert_eq!(runtimes.reachability_note(8), None);
        assert!(runtimes.announcements().is_empty());
    }

    #[test]
    fn frame_kinds_read_and_write_as_before() {
        let python = RuntimeId::from_name("python").expect("CPython is known");
        assert!(!python.is_native());
        assert_eq!(serde_json::to_string(&python).unwrap(), r#""python""#);
        assert_eq!(
            serde_json::to_string(&RuntimeId::NATIVE).unwrap(),
            r#""native""#
        );
        assert_eq!(RuntimeId::default(), RuntimeId::NATIVE);
        for kind in [python, RuntimeId::NATIVE] {
            let text = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<RuntimeId>(&text).unwrap(), kind);
        }
        // As serde's derive read the former enum: by name only, unknown names refused.
        assert!(serde_json::from_str::<RuntimeId>("1").is_err());
        let unknown = serde_json::from_str::<RuntimeId>(r#""cobol""#).unwrap_err();
        assert!(
            unknown
                .to_string()
                .starts_with("unknown variant `cobol`, expected `native` or `python`"),
            "{unknown}"
        );
    }

    #[test]
    fn every_runtime_has_rules_a_name_and_a_title() {
        assert_eq!(RuntimeId::NATIVE.rules().map(|r| r.name()), None);
        for (index, known) in KNOWN.iter().enumerate() {
            let id = RuntimeId::of_index(index);
            assert_eq!(RuntimeId::from_name(known.rules.name()), Some(id));
            assert_eq!(id.name(), known.rules.name());
            assert!(!known.rules.title().is_empty());
        }
        assert_eq!(standard_libraries(), "Python's standard library");
    }
}
