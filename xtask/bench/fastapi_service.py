"""A FastAPI service for `cargo xtask bench` (issue 27): uvicorn, one worker, uvloop, httptools.

Three endpoints: /orders keeps a little of every request (the leak the traced run must find, at
the line marked LEAK), /prices is served from a bounded cache, /health does nothing. It binds a
free loopback port itself and prints it ("port N"); the bench polls /health until it answers.
"""

import collections
import socket
import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()

# What /orders keeps: one small string per request, never dropped.
ORDERS = []

# /prices: the last PRICE_SLOTS symbols asked for, oldest evicted first.
PRICE_SLOTS = 128
prices = collections.OrderedDict()
price_requests = 0


@app.get("/orders")
async def orders():
    order = {"id": len(ORDERS), "items": ["widget", "gadget"], "total": 42.5}
    ORDERS.append(str(order))  # LEAK
    return {"id": order["id"], "held": len(ORDERS)}


@app.get("/prices")
async def price():
    global price_requests
    price_requests += 1
    # 512 symbols through 128 slots: hits and evictions both.
    symbol = "SYM%03d" % (price_requests % 512)
    quote = prices.get(symbol)
    if quote is None:
        quote = {"symbol": symbol, "bid": price_requests % 997 / 10, "ask": 1.0}
        prices[symbol] = quote
        if len(prices) > PRICE_SLOTS:
            prices.popitem(last=False)
    else:
        prices.move_to_end(symbol)
    return quote


@app.get("/health")
async def health():
    return {"status": "ok"}


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print("port", sock.getsockname()[1], flush=True)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
