"""Benchmark workload: ITERATIONS iterations of a pure-Python loop building and dropping lists,
dicts, strings and tuples. Small objects (tuples, short strings, small dicts) stay in pymalloc;
a 100..163-item list (of cached small ints), a tuple made from it, a 600..999-character string and a 48..63-entry dict
are over 512 bytes, so pymalloc hands them to malloc. The last 16 iterations' objects are kept,
so each is freed some iterations after it was made.
Prints "ready", waits for a line on stdin (so a tracer can attach first), runs, and prints
"ns_per_op X": wall time per iteration, timed by itself.
"""

import sys
import time


def work(iterations):
    kept = [None] * 16
    for i in range(iterations):
        # Small: stay in pymalloc (512 bytes or less).
        pair = (i, -i)
        name = "item-" + str(i)
        record = {"id": i, "name": name, "pair": pair}
        small = [pair, name, record]
        # Large: malloc, through pymalloc's fallback.
        items = list(range(100 + i % 64))
        frozen = tuple(items)
        text = name * (100 + i % 67)
        table = {n: name for n in range(48 + i % 16)}
        kept[i % 16] = (small, items, frozen, text, table)


def main():
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    print("ready", flush=True)
    if not sys.stdin.readline():
        return 1
    start = time.perf_counter_ns()
    work(iterations)
    print(f"ns_per_op {(time.perf_counter_ns() - start) / iterations:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
