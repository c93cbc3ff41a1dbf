"""A small HTTP service (CPython 3.11-3.13, stdlib only) with known leaks and its own ground truth.

    python3 py_service.py PORT        (PORT 0: any free port)

prints `ready PORT` once it listens on 127.0.0.1:PORT. Every handler answers only after its work
is done, so a client that has its answer knows the allocations happened. Endpoints:

    GET /search?q=X        caches expensive_search(q) in CACHE: one 4033-byte bytes object per
                           new q, never evicted                                   (LEAK:cache)
    GET /event?name=X      EVENTS.append(Event(...)): one 48-byte object per call  (LEAK:events)
    GET /churn?rounds=N    allocates a lot, keeps nothing
    GET /thread-leak?n=K   the leak-worker thread keeps K bytes objects of 5033 bytes (LEAK:thread)
    GET /nogil?n=K         K malloc(7777) through ctypes, GIL released, never freed (LEAK:nogil)
    GET /async?n=K         a coroutine on the asyncio loop thread keeps K bytes objects of 6033
                           bytes                                                   (LEAK:async)
    GET /truth             JSON: what each leak holds right now (counts and bytes)

Each leaking line carries a trailing `# LEAK:<name>` comment: tests find the line numbers by
scanning this file. What stays from each marked line, per object leaked, is that object alone
(the appends are on the next line, so a container's own growth is not counted against the leak's
line), except the float of time.time() with each event and the Python int holding each malloc'd
address (checked on all four interpreters with tracemalloc, which attributes each allocation to
its innermost Python line).

Sizes. A bytes object of n bytes of content is one allocation of 33 + n bytes (its 32-byte header,
the content and a trailing NUL), and `sys.getsizeof` of it is exactly that size: the truth below
is computed with `sys.getsizeof`. Above 512 bytes CPython's small-object allocator hands the
request to malloc unchanged. The events are instances of a `__slots__` class: no free list can hand
back a recycled object (tuples, floats, lists and dicts have free lists, so an append of a tuple
may allocate nothing at all), so each event is exactly one new allocation, from pymalloc (< 512
bytes) or from malloc under PYTHONMALLOC=malloc.
"""

import asyncio
import ctypes
import hashlib
import http.server
import json
import os
import queue
import sys
import threading
import time
import urllib.parse

SEARCH_RESULT_BYTES = 4000  # content of each cached value: a 4033-byte allocation
THREAD_BLOB_BYTES = 5000  # content of each object the worker thread keeps: 5033 bytes
ASYNC_BLOB_BYTES = 6000  # content of each object the coroutine keeps: 6033 bytes
NOGIL_BLOCK_BYTES = 7777  # each raw malloc made with the GIL released
CHURN_BLOB_BYTES = 3000

CACHE = {}  # q -> bytes, never evicted
EVENTS = []  # Event, only ever appended to
THREAD_HELD = []  # bytes kept by the leak-worker thread
ASYNC_HELD = []  # bytes kept by handle_async
NOGIL_HELD = []  # addresses returned by malloc, never freed
COUNTERS = {"churn_requests": 0, "churn_bytes": 0, "thread_jobs": 0, "async_calls": 0}
COUNTERS_LOCK = threading.Lock()

LIBC = ctypes.CDLL(None)  # CDLL (not PyDLL): ctypes releases the GIL around each call
LIBC.malloc.restype = ctypes.c_void_p
LIBC.malloc.argtypes = [ctypes.c_size_t]


class Event:
    __slots__ = ("at", "name")

    def __init__(self, at, name):
        self.at = at
        self.name = name


def expensive_search(q):
    digest = hashlib.sha256(q.encode()).digest()
    # 32 bytes repeated 125 times: a new 4000-byte bytes object (one allocation of 4033 bytes).
    return digest * (SEARCH_RESULT_BYTES // len(digest))  # LEAK:cache


def search(q):
    if q not in CACHE:
        CACHE[q] = expensive_search(q)
    return len(CACHE[q])


def record_event(name):
    event = Event(time.time(), name)  # LEAK:events
    EVENTS.append(event)
    return len(EVENTS)


def churn(rounds):
    # Only bytes, str and int objects, which have no free lists: everything made here is freed
    # before the function returns.
    total = 0
    for _ in range(rounds):
        blob = b"c" * CHURN_BLOB_BYTES
        total += len(blob.hex())
        blob = None
    return total


# The leak-worker thread: jobs come through a queue, each with an event to set when done.
JOBS = queue.Queue()


def leak_worker():
    while True:
        n, done = JOBS.get()
        for _ in range(n):
            blob = b"t" * THREAD_BLOB_BYTES  # LEAK:thread
            THREAD_HELD.append(blob)
        COUNTERS["thread_jobs"] += 1
        done.set()


def thread_leak(n):
    done = threading.Event()
    JOBS.put((n, done))
    if not done.wait(30):
        raise RuntimeError("leak-worker did not finish in 30 s")
    return len(THREAD_HELD)


def nogil(n):
    for _ in range(n):
        address = LIBC.malloc(NOGIL_BLOCK_BYTES)  # LEAK:nogil
        NOGIL_HELD.append(address)
    return len(NOGIL_HELD)


# An asyncio event loop running in its own thread.
LOOP = asyncio.new_event_loop()


def run_loop():
    asyncio.set_event_loop(LOOP)
    LOOP.run_forever()


async def handle_async(n):
    await asyncio.sleep(0)  # resumed by the loop: the rest runs from a callback of run_forever
    for _ in range(n):
        blob = b"a" * ASYNC_BLOB_BYTES  # LEAK:async
        ASYNC_HELD.append(blob)
    COUNTERS["async_calls"] += 1
    return len(ASYNC_HELD)


def run_async(n):
    return asyncio.run_coroutine_threadsafe(handle_async(n), LOOP).result(timeout=30)


def held(objects):
    """(count, bytes) of a list of bytes objects: getsizeof is each one's allocation size."""
    items = list(objects)
    return len(items), sum(sys.getsizeof(o) for o in items)


def truth():
    cache_n, cache_b = held(CACHE.values())
    thread_n, thread_b = held(THREAD_HELD)
    async_n, async_b = held(ASYNC_HELD)
    events = list(EVENTS)
    return {
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "pythonmalloc": os.environ.get("PYTHONMALLOC", ""),
        # co_filename, as Python frames name this file.
        "file": expensive_search.__code__.co_filename,
        "cache": {"entries": cache_n, "bytes": cache_b, "object_bytes": 33 + SEARCH_RESULT_BYTES},
        "events": {
            "count": len(events),
            "bytes": sum(sys.getsizeof(e) for e in events),
        },
        "churn": {
            "requests": COUNTERS["churn_requests"],
            "bytes_churned": COUNTERS["churn_bytes"],
        },
        "thread": {
            "objects": thread_n,
            "bytes": thread_b,
            "object_bytes": 33 + THREAD_BLOB_BYTES,
            "jobs": COUNTERS["thread_jobs"],
            "name": WORKER.name,
            "native_id": WORKER.native_id,
        },
        "nogil": {
            "blocks": len(NOGIL_HELD),
            "bytes": len(NOGIL_HELD) * NOGIL_BLOCK_BYTES,
            "block_bytes": NOGIL_BLOCK_BYTES,
        },
        "async": {
            "objects": async_n,
            "bytes": async_b,
            "object_bytes": 33 + ASYNC_BLOB_BYTES,
            "calls": COUNTERS["async_calls"],
            "thread": LOOP_THREAD.name,
            "native_id": LOOP_THREAD.native_id,
        },
    }


def number(query, name, default):
    return int(query.get(name, [str(default)])[0])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/search":
            body = {"q": query["q"][0], "bytes": search(query["q"][0])}
        elif url.path == "/event":
            body = {"events": record_event(query.get("name", ["?"])[0])}
        elif url.path == "/churn":
            churned = churn(number(query, "rounds", 50))
            with COUNTERS_LOCK:
                COUNTERS["churn_requests"] += 1
                COUNTERS["churn_bytes"] += churned
            body = {"churned": churned}
        elif url.path == "/thread-leak":
            body = {"objects": thread_leak(number(query, "n", 1))}
        elif url.path == "/nogil":
            body = {"blocks": nogil(number(query, "n", 1))}
        elif url.path == "/async":
            body = {"objects": run_async(number(query, "n", 1))}
        elif url.path == "/truth":
            body = truth()
        else:
            self.send_error(404)
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        pass  # quiet: the test reads stdout for `ready`, and stderr is nobody's business


WORKER = threading.Thread(target=leak_worker, name="leak-worker", daemon=True)
LOOP_THREAD = threading.Thread(target=run_loop, name="asyncio-loop", daemon=True)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    WORKER.start()
    LOOP_THREAD.start()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
