"""A leak known to the byte at a known line, for attaching by pid on every CPython: prints
`ready <pid>`, waits for a line on stdin (the tracer is attached by then), keeps COUNT bytes
objects of SIZE bytes in a list (each one block of SIZE + 33 bytes, its header and NUL, above
pymalloc's 512 so it comes from the C library on every build), prints `leaked <count>`, and
waits for stdin to close before it exits."""

import os
import sys

HELD = []


def leak(count, size):
    for _ in range(count):
        HELD.append(bytes(size))  # LEAK


def main():
    count, size = int(sys.argv[1]), int(sys.argv[2])
    print("ready", os.getpid(), flush=True)
    sys.stdin.readline()
    leak(count, size)
    print("leaked", len(HELD), flush=True)
    sys.stdin.read()


main()
