"""Small objects under load, for tests/tests/python_small_objects.rs (CPython 3.9 and later).

    python3 py_small_objects.py

Two threads run from the start: `events` keeps one new str per event (one allocation from
pymalloc, the line marked LEAK:events; the append is on the next line, so the list's own growth
is not counted against it), and `churn` makes a str of its own size and drops it at once (the
line marked BALANCED:churn: each replaces the one before, so one stays, and the report lists the
line's stack with what it made; built by `%`, not an f-string, so that its native stack differs
from the events' where no Python frame tells them apart). Prints `ready EVENT_SIZE CHURN_SIZE` first: the size of one block
of each (`sys.getsizeof`, which for a str is exactly its allocation). Then answers commands on
stdin, one per line, with one line each:

    count    `EVENTS CHURNED`: events kept and strs churned so far
    pause    stops both threads, then answers as `count` (exact: nothing runs after it)
    quit     exits 0
"""

import sys
import threading
import time

PAD = "p" * 60
EVENTS = []
# The churn's last str: each one replaces (frees) the one before, the last stays.
LAST = [None]
churned = 0
running = threading.Event()
running.set()


def events():
    i = 0
    while True:
        if not running.is_set():
            return
        for _ in range(100):
            s = f"event-{i:08d}-{PAD}"  # LEAK:events
            EVENTS.append(s)
            i += 1
        time.sleep(0.01)


def churn():
    global churned
    j = 0
    while True:
        if not running.is_set():
            return
        for _ in range(100):
            LAST[0] = "churn-%08d-%sq" % (j, PAD)  # BALANCED:churn
            j += 1
            churned = j
        time.sleep(0.01)


def main():
    event_size = sys.getsizeof(f"event-{0:08d}-{PAD}")
    churn_size = sys.getsizeof("churn-%08d-%sq" % (0, PAD))
    threads = [threading.Thread(target=events), threading.Thread(target=churn)]
    for thread in threads:
        thread.start()
    print(f"ready {event_size} {churn_size}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "pause":
            running.clear()
            for thread in threads:
                thread.join()
        if command in ("count", "pause"):
            print(f"{len(EVENTS)} {churned}", flush=True)
        elif command == "quit":
            break
    running.clear()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
