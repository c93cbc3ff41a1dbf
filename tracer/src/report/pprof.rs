//! The outstanding allocations as a pprof profile (`profile.proto`, gzipped): what `go tool
//! pprof`, Pyroscope and Parca read. One sample per stack with two values, `inuse_objects`
//! (count) and `inuse_space` (bytes); locations carry their functions and lines (inlined calls
//! first, as pprof wants), and mappings their build ids, so no tool needs to symbolize again.
//!
//! Every frame is kept, allocator plumbing included: pprof viewers fold frames themselves
//! (`-focus`, `-ignore`, `-hide`, `-show_from`, Pyroscope's and Parca's own filters), so hiding
//! them here would take that choice away, and the profile's leaves stay the JSON's frame 0.

use std::{
    collections::HashMap,
    io::{self, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::{Frame, Report};

/// The messages of profile.proto this writer fills (field numbers as in the proto).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// Writes `report` as a gzipped profile.proto.
pub fn write(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    let profile = build(report);
    let mut gzip = GzEncoder::new(out, Compression::default());
    gzip.write_all(&profile.encode_to_vec())?;
    gzip.finish()?;
    Ok(())
}

/// Interned strings, ids of functions, locations and mappings.
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(String, String), u64>,
    locations: Vec<proto::Location>,
    /// By (pid, address, line): a Python frame's address is its code object's, the same for
    /// each of its lines.
    location_ids: HashMap<(u32, u64, u32), u64>,
    mappings: Vec<proto::Mapping>,
}

impl Tables {
    fn string(&mut self, text: &str) -> i64 {
        if let Some(id) = self.string_ids.get(text) {
            return *id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(text.to_string());
        self.string_ids.insert(text.to_string(), id);
        id
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let file = frame.file.clone().unwrap_or_default();
        let key = (frame.function.clone(), file.clone());
        if let Some(id) = self.function_ids.get(&key) {
            return *id;
        }
        let id = self.functions.len() as u64 + 1;
        let name = self.string(&frame.function);
        let filename = self.string(&file);
        self.functions.push(proto::Function {
            id,
            name,
            system_name: name,
            filename,
        });
        self.function_ids.insert(key, id);
        id
    }

    /// The location of one stack address: its frames, innermost (inlined) first.
    fn location(&mut self, report: &Report, pid: u32, frames: &[Frame]) -> u64 {
        let address = frames.last().map_or(0, |f| f.address);
        let runtime_line = frames
            .last()
            .filter(|f| !f.kind.is_native())
            .map_or(0, |f| f.line.map_or(u32::MAX, |l| l));
        let key = (pid, address, runtime_line);
        if let Some(id) = self.location_ids.get(&key) {
            return *id;
        }
        let id = self.locations.len() as u64 + 1;
        let mapping_id = report
            .mappings
            .iter()
            .position(|m| m.pid == pid && address >= m.start && address < m.end)
            .map_or(0, |index| index as u64 + 1);
        let line = frames
            .iter()
            .map(|frame| proto::Line {
                function_id: self.function(frame),
                line: frame.line.map_or(0, i64::from),
            })
            .collect();
        self.locations.push(proto::Location {
            id,
            mapping_id,
            address,
            line,
        });
        self.location_ids.insert(key, id);
        id
    }
}

fn build(report: &Report) -> proto::Profile {
    let mut tables = Tables::default();
    tables.string("");
    let value_type = |tables: &mut Tables, kind: &str, unit: &str| proto::ValueType {
        r#type: tables.string(kind),
        unit: tables.string(unit),
    };
    let sample_type = vec![
        value_type(&mut tables, "inuse_objects", "count"),
        value_type(&mut tables, "inuse_space", "bytes"),
    ];
    // Mapping ids are positions in report.mappings, plus one.
    for (index, mapping) in report.mappings.iter().enumerate() {
        let filename = tables.string(&mapping.path);
        let build_id = tables.string(mapping.build_id.as_deref().unwrap_or_default());
        tables.mappings.push(proto::Mapping {
            id: index as u64 + 1,
            memory_start: mapping.start,
            memory_limit: mapping.end,
            file_offset: mapping.file_offset,
            filename,
            build_id,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
    }
    let pid_key = tables.string("pid");
    let stack_key = tables.string("stack_id");
    let unknown = [Frame {
        function: "[unknown stack]".into(),
        module: "[unknown]".into(),
        ..Frame::default()
    }];
    let mut samples = Vec::new();
    for stack in report.stacks.iter().filter(|s| s.outstanding_bytes > 0) {
        let frames: &[Frame] = if stack.frames.is_empty() {
            &unknown
        } else {
            &stack.frames
        };
        // A location ends at its non-inlined frame.
        let location_id = frames
            .split_inclusive(|frame| !frame.inlined)
            .map(|group| tables.location(report, stack.pid, group))
            .collect();
        let stack_id = tables.string(&stack.id);
        samples.push(proto::Sample {
            location_id,
            value: vec![
                stack.outstanding_allocations as i64,
                stack.outstanding_bytes as i64,
            ],
            label: vec![
                proto::Label {
                    key: pid_key,
                    num: i64::from(stack.pid),
                    ..Default::default()
                },
                proto::Label {
                    key: stack_key,
                    str: stack_id,
                    ..Default::default()
                },
            ],
        });
    }
    let duration_nanos = (report.duration_secs * 1e9) as i64;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let comment = match report.sample_bytes {
        Some(n) => vec![tables.string(&format!(
            "estimates: one allocation sampled per {n} bytes on average (--sample-bytes)"
        ))],
        None => Vec::new(),
    };
    let period_type = Some(value_type(&mut tables, "space", "bytes"));
    let default_sample_type = sample_type[1].r#type;
    proto::Profile {
        sample_type,
        sample: samples,
        mapping: tables.mappings,
        location: tables.locations,
        function: tables.functions,
        string_table: tables.strings,
        time_nanos: now - duration_nanos,
        duration_nanos,
        period_type,
        period: report.sample_bytes.map_or(1, |n| n as i64),
        comment,
        default_sample_type,
    }
}
