"""Leaks known to the byte, then exits (CPython): 2000 bytearrays of 3000 bytes in a dict that
is never emptied. Each bytearray's buffer is one malloc of 3001 bytes (above pymalloc's 512), so
the picture at exit holds exactly 2000 of them; then 20000 floats (24 bytes each, from pymalloc)
in a list. The interpreter's teardown frees them all."""

cache = {}


def remember(key):
    cache[key] = bytearray(3000)


for key in range(2000):
    remember(key)
print("done", len(cache), flush=True)

# Small objects: 20000 floats (24 bytes each, from pymalloc's arenas, never from malloc) kept
# in a list that is never emptied.
floats = [float(key) + 0.5 for key in range(20000)]
print("floats", len(floats), flush=True)
