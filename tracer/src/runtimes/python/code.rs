//! Naming Python frames: reading a code object's qualified name (its name before 3.11), file, first line and line
//! table out of the target's memory, once per code object, and each stack's frames as soon as
//! the kernel announces the stack (a code object may be freed, and its address reused, long
//! before the report).

use std::{collections::HashMap, sync::Arc};

use tracer_common::python::PythonFrame;

use super::{
    interpreter::Interpreter,
    layout::{BYTES_DATA, OBJECT_SIZE, OBJECT_TYPE, STR_LENGTH, STR_STATE},
    lines::line_at_for,
};
use crate::{runtimes::RuntimeFrame, target::remote::RemoteMemory};

/// Longest name or path read (longer ones are cut).
const MAX_STR_CHARS: u64 = 4096;
/// Largest line table read.
const MAX_LINE_TABLE: u64 = 1 << 20;

/// What a code object says about itself.
#[derive(Debug, PartialEq, Eq)]
pub struct CodeInfo {
    pub qualname: String,
    pub filename: String,
    pub first_line: i32,
    pub line_table: Vec<u8>,
    /// The fields it was read from (qualname, filename, line table), to tell a code object
    /// from another one at the same address later.
    fingerprint: [u64; 3],
}

/// One traced interpreter process's code objects.
struct ProcessCodes {
    interpreter: Interpreter,
    /// Open while the process is alive.
    memory: Option<RemoteMemory>,
    /// Code objects by address, with the batch of new stacks they were last checked in.
    codes: HashMap<u64, (Arc<CodeInfo>, u64)>,
}

/// The code objects of every traced interpreter, and the Python frames of each stack, named.
#[derive(Default)]
pub struct CodeObjects {
    processes: HashMap<u32, ProcessCodes>,
    /// (tgid, stack id) -> its Python frames' code objects, innermost first, as read when the
    /// stack was new (`None`: unreadable).
    stacks: HashMap<(u32, u64), Vec<Option<Arc<CodeInfo>>>>,
    /// The batch of new stacks being read: a code object is checked once per batch.
    batch: u64,
}

impl CodeObjects {
    /// Starts reading the code objects of `pid`, which runs `interpreter`.
    pub fn track(&mut self, pid: u32, interpreter: Interpreter) {
        let memory = RemoteMemory::open(pid).ok();
        self.processes.insert(
            pid,
            ProcessCodes {
                interpreter,
                memory,
                codes: HashMap::new(),
            },
        );
    }

    /// The interpreter of `pid`, if it is tracked.
    pub fn interpreter(&self, pid: u32) -> Option<&Interpreter> {
        self.processes.get(&pid).map(|p| &p.interpreter)
    }

    /// Forgets `pid`'s interpreter (it exec'd): its stacks keep the names read so far.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Starts a batch of new stacks (those announced since the last poll): a code object
    /// known from an earlier batch is checked again, once, as its address may belong to
    /// another one by now.
    pub fn next_batch(&mut self) {
        self.batch += 1;
    }

    /// Names the Python frames of a stack just kept by the kernel (`ips`, its entries), while
    /// its code objects exist.
    pub fn read_stack(&mut self, pid: u32, stack_id: u64, ips: &[u64]) {
        if self.stacks.contains_key(&(pid, stack_id)) {
            return;
        }
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        let codes: Vec<Option<Arc<CodeInfo>>> = ips
            .iter()
            .filter_map(|&ip| PythonFrame::from_entry(ip))
            .map(|frame| process.code(frame.code, Some(self.batch)))
            .collect();
        self.stacks.insert((pid, stack_id), codes);
    }

    /// The frames of the Python entries of a stack, innermost first, each with its activation
    /// flag: from the names read when the stack was new, else read now.
    pub fn frames(&mut self, pid: u32, stack_id: u64, ips: &[u64]) -> Vec<(RuntimeFrame, bool)> {
        let python: Vec<PythonFrame> = ips
            .iter()
            .filter_map(|&ip| PythonFrame::from_entry(ip))
            .collect();
        let known = self.stacks.get(&(pid, stack_id));
        let (module, version) = self
            .processes
            .get(&pid)
            .map(|p| (p.interpreter.module.clone(), p.interpreter.layout.version))
            .unwrap_or_else(|| ("[python]".to_string(), (3, 11)));
        let mut frames = Vec::with_capacity(python.len());
        for (i, frame) in python.iter().enumerate() {
            let info = match known {
                Some(codes) => codes.get(i).cloned().flatten(),
                None => self
                    .processes
                    .get_mut(&pid)
                    .and_then(|p| p.code(frame.code, None)),
            };
            frames.push((
                python_frame(info.as_deref(), frame, &module, version),
                frame.entry,
            ));
        }
        frames
    }

    /// The process exited: its memory is gone, the names read so far stay.
    pub fn close(&mut self, pid: u32) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.memory = None;
        }
    }
}

impl ProcessCodes {
    /// The code object at `address`, read if new, or when its fields changed since (checked
    /// once per `batch`, when one is given).
    fn code(&mut self, address: u64, batch: Option<u64>) -> Option<Arc<CodeInfo>> {
        if let Some((known, checked)) = self.codes.get_mut(&address) {
            let same = match batch {
                Some(batch) if batch != *checked => {
                    *checked = batch;
                    self.memory
                        .as_ref()
                        .and_then(|m| fingerprint(m, &self.interpreter, address))
                        .is_none_or(|f| f == known.fingerprint)
                }
                _ => true,
            };
            if same {
                return Some(known.clone());
            }
        }
        let info = Arc::new(read_code(
            self.memory.as_ref()?,
            &self.interpreter,
            address,
        )?);
        self.codes
            .insert(address, (info.clone(), batch.unwrap_or_default()));
        Some(info)
    }
}

/// The pointers a code object's names come from.
fn fingerprint(memory: &RemoteMemory, interpreter: &Interpreter, code: u64) -> Option<[u64; 3]> {
    let layout = &interpreter.layout.code;
    Some([
        memory.read_u64(code + layout.qualname).ok()?,
        memory.read_u64(code + layout.filename).ok()?,
        memory.read_u64(code + layout.linetable).ok()?,
    ])
}

/// Reads the code object at `code`; `None` unless it is one (its type is `PyCode_Type`).
fn read_code(memory: &RemoteMemory, interpreter: &Interpreter, code: u64) -> Option<CodeInfo> {
    if memory.read_u64(code + OBJECT_TYPE).ok()? != interpreter.code_type {
        return None;
    }
    let layout = &interpreter.layout.code;
    let fingerprint = fingerprint(memory, interpreter, code)?;
    let [qualname, filename, line_table] = fingerprint;
    let first_line = memory.read_u32(code + layout.firstlineno).ok()? as i32;
    let table_len = memory.read_u64(line_table + OBJECT_SIZE).ok()?;
    let line_table = if table_len <= MAX_LINE_TABLE {
        memory
            .read_vec(line_table + BYTES_DATA, table_len as usize)
            .ok()?
    } else {
        Vec::new()
    };
    Some(CodeInfo {
        qualname: read_str(memory, interpreter, qualname).unwrap_or_else(|| "[unnamed]".into()),
        filename: read_str(memory, interpreter, filename).unwrap_or_default(),
        first_line,
        line_table,
        fingerprint,
    })
}

/// A compact `str` object's text (every name and path a code object has is one).
fn read_str(memory: &RemoteMemory, interpreter: &Interpreter, object: u64) -> Option<String> {
    let layout = &interpreter.layout.code;
    let state = memory.read_u32(object + STR_STATE).ok()?;
    let length = memory
        .read_u64(object + STR_LENGTH)
        .ok()?
        .min(MAX_STR_CHARS);
    let (kind, compact, ascii) = ((state >> 2) & 7, state >> 5 & 1, state >> 6 & 1);
    if compact == 0 {
        return None;
    }
    if ascii == 1 {
        let bytes = memory
            .read_vec(object + layout.ascii_data, length as usize)
            .ok()?;
        return Some(String::from_utf8_lossy(&bytes).into_owned());
    }
    let bytes = memory
        .read_vec(
            object + layout.compact_data,
            (length * u64::from(kind)) as usize,
        )
        .ok()?;
    let text = match kind {
        1 => bytes.iter().map(|&b| char::from(b)).collect(),
        2 => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        4 => bytes
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('?'))
            .collect(),
        _ => return None,
    };
    Some(text)
}

/// The frame of a Python frame's entry, in CPython `version`'s (major, minor) line table.
fn python_frame(
    info: Option<&CodeInfo>,
    frame: &PythonFrame,
    module: &str,
    version: (u8, u8),
) -> RuntimeFrame {
    let Some(info) = info else {
        return RuntimeFrame {
            function: format!("[python code {:#x}]", frame.code),
            module: module.to_string(),
            address: frame.code,
            ..RuntimeFrame::default()
        };
    };
    RuntimeFrame {
        function: info.qualname.replace(';', ":").replace(['\n', '\r'], " "),
        module: module.to_string(),
        file: Some(info.filename.clone()),
        line: line_at_for(version, &info.line_table, info.first_line, frame.offset),
        address: frame.code,
    }
}
