"""leaktracer's Python demo: a small search service with an unbounded cache (stdlib only).

GET /search?q=... answers from a cache that never evicts: every new query keeps its result
(about 4 KiB) for ever. GET /health builds a reply and keeps nothing. A load thread plays the
clients: ~40 searches/s, mostly new queries, and as many health checks. Runs until killed.
"""
import http.server
import json
import os
import random
import sys
import threading
import time
import urllib.request

CACHE = {}


def expensive_search(query):
    # The "search": a result page of about 4 KiB.
    hits = [f"{query}-{n}" for n in range(40)]
    return json.dumps({"query": query, "hits": hits}).encode() + b" " * 3000


def search(query):
    if query not in CACHE:
        CACHE[query] = expensive_search(query)  # BUG: never evicted
    return CACHE[query]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/search?q="):
            body = search(self.path[len("/search?q="):])
        elif self.path == "/health":
            body = json.dumps({"ok": True, "cached": len(CACHE)}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def clients(port):
    rng = random.Random(7)
    while True:
        for path in (f"/search?q=item{rng.randrange(1_000_000)}", "/health"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as reply:
                reply.read()
        time.sleep(0.025)


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    threading.Thread(target=clients, args=(port,), daemon=True).start()
    print(f"leaky-service: pid {os.getpid()} serving on port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
