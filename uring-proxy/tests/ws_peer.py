"""A WebSocket server and client from PyPI's websockets, for the upgrade tests: a peer
nobody here wrote.

    ws_peer.py server        echoes every message on 127.0.0.1, prints "listening PORT",
                             serves until stdin closes
    ws_peer.py client URL    through URL: a text message, a 1 MiB binary one, a ping, the
                             closing handshake; checks each, prints one "ok NAME" line per
                             step and exits 0, or fails loudly
"""

import asyncio
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

BIG = bytes(range(256)) * 4096  # 1 MiB, many TCP segments each way


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def server():
    async with serve(echo, "127.0.0.1", 0, max_size=None) as s:
        port = s.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def client(url):
    async with connect(url, max_size=None, open_timeout=10, close_timeout=10) as ws:
        await ws.send("hello")
        got = await asyncio.wait_for(ws.recv(), 10)
        assert got == "hello", got
        print("ok text", flush=True)
        await ws.send(BIG)
        got = await asyncio.wait_for(ws.recv(), 10)
        assert got == BIG, len(got)
        print("ok binary", flush=True)
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)
        print("ok ping", flush=True)
    assert ws.close_code == 1000, ws.close_code
    print("ok close", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server())
    else:
        asyncio.run(client(sys.argv[2]))
