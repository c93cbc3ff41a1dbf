//! Python frames into native stacks: since 3.11 one C call of `_PyEval_EvalFrameDefault`
//! runs a run of Python frames (Python-to-Python calls do not recurse in C; on 3.9 and 3.10
//! they do, and every frame is an activation of its own). Walking from the
//! leaf, each eval-loop frame gives way to the next run of Python frames, up to the one that
//! began its activation, as py-spy's and memray's native modes do. Python frames left over
//! (the native walk stopped short) go at the root end. The interpreter's other C frames above
//! the innermost Python frame (vectorcall glue, the eval loop's helpers) go too, by the rule
//! `is_own_native_frame` of [`super::RULES`] (applied where the merge is spliced in): a stack reads
//! `PyUnicode_New` <- `expensive_search` <- `search` <- `Handler.do_GET` <- ... with the
//! native frames of other objects (C extensions, the C library's thread start) in place.
//!
//! An eval-loop frame is known by its name, or by its address in the loop's ranges (a stripped
//! build names none of its split-off part). A clang build of 3.14+ with the tail-calling
//! interpreter runs each instruction in a function of its own (`_TAIL_CALL_LOAD_ATTR` and the
//! like) between the eval loop and what it calls: such a frame is the loop at work, dropped.

use crate::runtimes::{Merged, NativeFrame, RuntimeFrame};

/// Whether a native frame is the interpreter's eval loop (or a part the compiler split off,
/// such as `_PyEval_EvalFrameDefault.cold`): by name, or by its return address in one of
/// `eval_loop` (`[start, end)`, in the process).
fn is_eval_loop(frame: &NativeFrame, eval_loop: &[[u64; 2]]) -> bool {
    if frame.inlined {
        return false;
    }
    // A return address: the call is just before it.
    let call = frame.address.wrapping_sub(1);
    frame.function.starts_with("_PyEval_EvalFrameDefault")
        || eval_loop
            .iter()
            .any(|&[start, end]| start <= call && call < end)
}

/// Whether a native frame is an instruction of the tail-calling interpreter.
fn is_tail_call(frame: &NativeFrame) -> bool {
    frame.function.starts_with("_TAIL_CALL_")
}

/// The stack with `python` (innermost first, each with its activation flag) in place of the
/// eval-loop frames of `native` (innermost first); `eval_loop`: the loop's ranges.
pub fn merge(
    native: &[NativeFrame],
    python: Vec<(RuntimeFrame, bool)>,
    eval_loop: &[[u64; 2]],
) -> Vec<Merged> {
    if python.is_empty() {
        return (0..native.len()).map(Merged::Native).collect();
    }
    let mut python = python.into_iter().peekable();
    let mut merged = Vec::with_capacity(native.len() + python.len());
    for (index, frame) in native.iter().enumerate() {
        if is_eval_loop(frame, eval_loop) && python.peek().is_some() {
            for (python_frame, entry) in python.by_ref() {
                merged.push(Merged::Runtime(python_frame));
                if entry {
                    break;
                }
            }
        } else if !is_tail_call(frame) {
            merged.push(Merged::Native(index));
        }
    }
    merged.extend(python.map(|(frame, _)| Merged::Runtime(frame)));
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        report::Frame,
        runtimes::{Rules, RuntimeId, python::RULES},
    };

    fn native(name: &str) -> Frame {
        let module = if name == "main" {
            "python3"
        } else {
            "libpython3.12.so"
        };
        Frame {
            function: name.into(),
            module: module.into(),
            ..Frame::default()
        }
    }

    fn python(name: &str, entry: bool) -> (RuntimeFrame, bool) {
        let frame = RuntimeFrame {
            function: name.into(),
            module: "libpython3.12.so".into(),
            ..RuntimeFrame::default()
        };
        (frame, entry)
    }

    /// `python` merged into `stack` as a trace does it.
    fn merged(stack: Vec<Frame>, python: Vec<(RuntimeFrame, bool)>) -> Vec<Frame> {
        let native: Vec<NativeFrame> = stack
            .iter()
            .map(|f| NativeFrame {
                function: &f.function,
                inlined: f.inlined,
                address: f.address,
            })
            .collect();
        let plan = merge(&native, python, &[[0x5000, 0x6000]]);
        let kind = RuntimeId::from_name(RULES.name()).unwrap();
        crate::symbolize::splice(stack, kind, plan)
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.function.as_str()).collect()
    }

    #[test]
    fn each_eval_loop_frame_gives_way_to_its_activation() {
        let stack = vec![
            native("PyBytes_FromStringAndSize"),
            native("_PyEval_EvalFrameDefault"),
            native("method_vectorcall"),
            native("_PyEval_EvalFrameDefault.cold"),
            native("PyEval_EvalCode"),
            native("main"),
        ];
        let frames = vec![
            python("expensive_search", false),
            python("search", true),
            python("Handler.do_GET", false),
            python("<module>", true),
        ];
        assert_eq!(
            names(&merged(stack, frames)),
            [
                "PyBytes_FromStringAndSize",
                "expensive_search",
                "search",
                "Handler.do_GET",
                "<module>",
                "main"
            ]
        );
    }

    #[test]
    fn before_3_11_each_eval_loop_frame_gives_way_to_one_frame() {
        // 3.9/3.10: a C call of the eval loop per Python frame, an interpreter's C function
        // between two (left out, as the interpreter's own).
        let stack = vec![
            native("PyByteArray_Resize"),
            native("_PyEval_EvalFrameDefault"),
            native("_PyFunction_Vectorcall"),
            native("_PyEval_EvalFrameDefault"),
            native("map_next"),
            native("_PyEval_EvalFrameDefault"),
            native("main"),
        ];
        let frames = vec![
            python("leak", true),
            python("Handler.handle", true),
            python("<module>", true),
        ];
        assert_eq!(
            names(&merged(stack, frames)),
            [
                "PyByteArray_Resize",
                "leak",
                "Handler.handle",
                "<module>",
                "main"
            ]
        );
    }

    #[test]
    fn leftovers_go_at_the_root_and_spare_eval_frames_stay() {
        let frames = vec![python("f", true), python("g", true)];
        assert_eq!(
            names(&merged(
                vec![native("malloc_site"), native("_PyEval_EvalFrameDefault")],
                frames.clone()
            )),
            ["malloc_site", "f", "g"]
        );
        assert_eq!(
            names(&merged(
                vec![
                    native("_PyEval_EvalFrameDefault"),
                    native("_PyEval_EvalFrameDefault"),
                    native("_PyEval_EvalFrameDefault")
                ],
                frames
            )),
            ["f", "g"]
        );
    }

    #[test]
    fn an_unnamed_frame_in_the_eval_loop_s_ranges_is_the_eval_loop() {
        // A stripped build: the split-off part has no name, only its address.
        let mut cold = native("python3.13+0x3d7a0");
        cold.module = "python3.13".into();
        cold.address = 0x5801;
        let mut outside = native("ext_call");
        outside.module = "ext.so".into();
        outside.address = 0x7001;
        let frames = vec![
            python("leak", false),
            python("main", true),
            python("<module>", true),
        ];
        assert_eq!(
            names(&merged(
                vec![native("PyByteArray_Resize"), cold, outside],
                frames
            )),
            ["PyByteArray_Resize", "leak", "main", "ext_call", "<module>"]
        );
        // A return address just past the range's end is a call at its last bytes.
        let mut at_end = native("python3.13+0x6000");
        at_end.address = 0x6000;
        assert_eq!(names(&merged(vec![at_end], vec![python("f", true)])), ["f"]);
    }

    #[test]
    fn tail_calling_instructions_are_dropped_with_the_eval_loop() {
        let frames = vec![python("f", false), python("g", true)];
        assert_eq!(
            names(&merged(
                vec![
                    native("PyList_Append"),
                    native("_TAIL_CALL_LIST_APPEND"),
                    native("_PyEval_EvalFrameDefault"),
                    native("main")
                ],
                frames
            )),
            ["PyList_Append", "f", "g", "main"]
        );
    }
}
