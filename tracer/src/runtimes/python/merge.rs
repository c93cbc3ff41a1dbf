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

use crate::runtimes::{Merged, NativeFrame, RuntimeFrame};

/// Whether a native frame is the interpreter's eval loop (or a part the compiler split off,
/// such as `_PyEval_EvalFrameDefault.cold`).
fn is_eval_loop(frame: &NativeFrame) -> bool {
    !frame.inlined && frame.function.starts_with("_PyEval_EvalFrameDefault")
}

/// The stack with `python` (innermost first, each with its activation flag) in place of the
/// eval-loop frames of `native` (innermost first).
pub fn merge(native: &[NativeFrame], python: Vec<(RuntimeFrame, bool)>) -> Vec<Merged> {
    if python.is_empty() {
        return (0..native.len()).map(Merged::Native).collect();
    }
    let mut python = python.into_iter().peekable();
    let mut merged = Vec::with_capacity(native.len() + python.len());
    for (index, frame) in native.iter().enumerate() {
        if is_eval_loop(frame) && python.peek().is_some() {
            for (python_frame, entry) in python.by_ref() {
                merged.push(Merged::Runtime(python_frame));
                if entry {
                    break;
                }
            }
        } else {
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
            })
            .collect();
        let plan = merge(&native, python);
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
}
