"""Leaks known to the byte, then exits (CPython): 2000 bytes objects of 3000 bytes in a dict
that is never emptied. Each is one block of 3033 bytes (its header and NUL; above pymalloc's
512, so from the C library on every version), so the picture at exit holds exactly 2000 of
them; then 20000 floats (24 bytes each, from pymalloc) in a list. The interpreter's teardown
frees them all. With the argument `sys-exit` it ends with `sys.exit(0)` (3.13+ tear down from
`Py_Exit` then, without calling `Py_FinalizeEx`), else by running off its end."""

import sys

cache = {}


def remember(key):
    cache[key] = bytes(3000)


for key in range(2000):
    remember(key)
print("done", len(cache), flush=True)

# Small objects: 20000 floats (24 bytes each, from pymalloc's arenas, never from malloc) kept
# in a list that is never emptied.
floats = [float(key) + 0.5 for key in range(20000)]
print("floats", len(floats), flush=True)

if sys.argv[1:] == ["sys-exit"]:
    sys.exit(0)
