"""Dumps, for every code object of this interpreter's standard library, what the line-table
decoder must reproduce: tests/tests/python_lines.rs reads it.

Compiles every .py file under sysconfig's "stdlib" path (site-packages/dist-packages left out:
not the standard library), walks every nested code object (co_consts, recursively) and writes
one line per code object to stdout:

    <co_firstlineno> <co_linetable as hex, or "-" when empty> <line,line,...>

the last field holding, for each even byte offset of co_code in order, the line co_lines()
gives it ("." where the range's line is None or no range covers the offset). A file that does
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


def expected_lines(co):
    units = len(co.co_code) // 2
    lines = ["."] * units
    for start, end, line in co.co_lines():
        if line is not None:
            text = str(line)
            for unit in range(start // 2, min(end // 2, units)):
                lines[unit] = text
    return lines


def main():
    warnings.simplefilter("ignore")
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
                table = co.co_linetable.hex() or "-"
                chunk.append(
                    f"{co.co_firstlineno} {table} {','.join(expected_lines(co))}\n"
                )
            out.write("".join(chunk))
    out.write(f"# files {compiled} skipped {skipped}\n")
    out.flush()


if __name__ == "__main__":
    main()
