"""A CPython process that must not be harmed by leaktracer writing into its allocator tables,
for tests/tests/python_small_objects.rs (CPython 3.9 and later).

    python3 py_small_harm.py          works until told to stop
    python3 py_small_harm.py idle     prints `ready` and waits for stdin to close (an untraced
                                      twin whose tables are as the program started)

Prints `ready`, then until `stop` on stdin: four threads build and drop many small objects and
check each round's digest against the one computed before anything else ran; a thread forks
children that do the same and exit 0 when right (3 otherwise); a thread runs a child interpreter
(fork and exec) and checks its answer; a thread sends SIGUSR1 to the process, whose handler
allocates too. On `stop` it joins them and prints `done ROUNDS FORKS EXECS SIGNALS BAD`, and
exits 0 when nothing was wrong (BAD 0), 1 otherwise. `pymalloc` on stdin answers `pymalloc yes`
when CPython sees its own pymalloc in its object table (sys._debugmallocstats prints pymalloc's
figures only then), `pymalloc no` otherwise; `tracemalloc-start` and `tracemalloc-stop` start and
stop tracemalloc (which wraps whatever the tables hold, and puts it back at its stop), answering
`ok`.
"""

import hashlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import warnings

# A fork with threads running warns from 3.12 on: expected here.
warnings.simplefilter("ignore", DeprecationWarning)

CHILD_CODE = "print(sum(len(str(i)) for i in range(20000)))"
CHILD_ANSWER = str(sum(len(str(i)) for i in range(20000)))


def work(seed):
    """Many small objects (strs, ints, tuples, lists, a dict), and a digest of every one."""
    table = {}
    for i in range(3000):
        key = f"k{seed}-{i}"
        table[key] = (i, str(i * 7), [i, seed])
    digest = hashlib.sha256()
    for key in sorted(table):
        i, text, pair = table[key]
        digest.update(f"{key}:{text}:{pair[0] + pair[1]}".encode())
    return digest.hexdigest()


EXPECTED = [work(seed) for seed in range(4)]
stopping = threading.Event()
lock = threading.Lock()
counts = {"rounds": 0, "forks": 0, "execs": 0, "signals": 0, "bad": 0}


def count(name):
    with lock:
        counts[name] += 1


def worker(seed):
    while not stopping.is_set():
        count("rounds" if work(seed) == EXPECTED[seed] else "bad")


def forker():
    while not stopping.is_set():
        pid = os.fork()
        if pid == 0:
            ok = all(work(seed) == EXPECTED[seed] for seed in range(2))
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        count("forks" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else "bad")
        time.sleep(0.05)


def execer():
    while not stopping.is_set():
        done = subprocess.run(
            [sys.executable, "-c", CHILD_CODE], capture_output=True, text=True
        )
        ok = done.returncode == 0 and done.stdout.strip() == CHILD_ANSWER
        count("execs" if ok else "bad")
        time.sleep(0.1)


def on_signal(signum, frame):
    # Allocates in the handler too.
    junk = [str(i) for i in range(50)]
    counts["signals"] += len(junk) // 50


def signaller():
    while not stopping.is_set():
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.005)


def pymalloc_in_table():
    """sys._debugmallocstats prints pymalloc's block figures only when the object table holds
    pymalloc's own malloc."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        return b"Small block threshold" in out.read()


def main():
    if sys.argv[1:] == ["idle"]:
        print("ready", flush=True)
        sys.stdin.read()
        return 0
    signal.signal(signal.SIGUSR1, on_signal)
    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    threads += [threading.Thread(target=f) for f in (forker, execer, signaller)]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    while True:
        # The main thread runs the signal handlers: it waits a little at a time.
        if not select.select([sys.stdin], [], [], 0.01)[0]:
            continue
        line = sys.stdin.readline()
        if not line:
            break
        command = line.strip()
        if command == "pymalloc":
            print("pymalloc", "yes" if pymalloc_in_table() else "no", flush=True)
        elif command == "tracemalloc-start":
            tracemalloc.start()
            print("ok", flush=True)
        elif command == "tracemalloc-stop":
            tracemalloc.stop()
            print("ok", flush=True)
        elif command == "count":
            with lock:
                print(counts["rounds"], counts["bad"], flush=True)
        elif command == "stop":
            break
    stopping.set()
    for thread in threads:
        thread.join()
    c = counts
    print(f"done {c['rounds']} {c['forks']} {c['execs']} {c['signals']} {c['bad']}", flush=True)
    return 0 if c["bad"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
