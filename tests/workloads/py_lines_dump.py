"""Dumps, for every code object of this interpreter's standard library, what the line-table
decoder must reproduce: tests/tests/python_lines.rs reads it.

Compiles every .py file under sysconfig's "stdlib" path (site-packages/dist-packages left out:
not the standard library), walks every nested code object (co_consts, recursively) and writes
one line per code object to stdout:

    <co_firstlineno> <line table as hex, or "-" when empty> <line,line,...>

the table being co_linetable (3.10+) or co_lnotab (3.9), the last field holding, for each even
byte offset of co_code in order, the line CPython gives it: co_lines()'s (3.10+; "." where the
range's line is None or no range covers the offset), or, before co_lines() existed (3.9),
PyCode_Addr2Line's, the C function the interpreter names a frame's line with. A file that does
not compile (bad-syntax fixtures, lib2to3's Python 2 test data, ...) is skipped and named on
stderr. The last line is "# files <compiled> skipped <skipped>".
"""

import os
import sys
import sysconfig
import types
import warnings


def code_objects(code):
    stack = [code]
    while stack:
        co = stack.pop()
        yield co
        stack.extend(c for c in co.co_consts if isinstance(c, types.CodeType))


def addr2line():
    """PyCode_Addr2Line(code, byte offset), through ctypes."""
    import ctypes

    function = ctypes.pythonapi.PyCode_Addr2Line
    function.argtypes = [ctypes.py_object, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def line_table(co):
    if hasattr(co, "co_lines"):
        return co.co_linetable
    return co.co_lnotab


def expected_lines(co, line_of):
    units = len(co.co_code) // 2
    if not hasattr(co, "co_lines"):
        return [str(line_of(co, 2 * unit)) for unit in range(units)]
    lines = ["."] * units
    for start, end, line in co.co_lines():
        if line is not None:
            text = str(line)
            for unit in range(start // 2, min(end // 2, units)):
                lines[unit] = text
    return lines


def main():
    warnings.simplefilter("ignore")
    line_of = None if hasattr(main.__code__, "co_lines") else addr2line()
    stdlib = sysconfig.get_paths()["stdlib"]
    out = sys.stdout
    compiled = skipped = 0
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in ("site-packages", "dist-packages", "__pycache__")
        )
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    source = f.read()
                module = compile(source, path, "exec", dont_inherit=True)
            except Exception as e:  # SyntaxError, ValueError (NUL bytes), RecursionError, ...
                skipped += 1
                print(f"skipped {path}: {type(e).__name__}", file=sys.stderr)
                continue
            compiled += 1
            chunk = []
            for co in code_objects(module):
                table = line_table(co).hex() or "-"
                lines = ",".join(expected_lines(co, line_of))
                chunk.append(f"{co.co_firstlineno} {table} {lines}\n")
            out.write("".join(chunk))
    out.write(f"# files {compiled} skipped {skipped}\n")
    out.flush()


if __name__ == "__main__":
    main()
