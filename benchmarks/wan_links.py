"""Shaped links for the WAN benchmark: a loopback TCP proxy per simulated student that
limits each direction to a rate and delays it by half the round trip.

netem does not exist in this kernel, so a link is modelled here, in one asyncio process:

* the bottleneck serialises bytes at the direction's rate (a token bucket without burst:
  a chunk finishes crossing when the link has carried everything queued before it);
* then propagation holds every chunk for rtt/2, pipelined: chunks in flight overlap as
  packets on a wire do, so a bulk transfer runs at the rate, not stop-and-wait;
* the bottleneck queues at most `buffer_s` of data; past that the proxy stops reading and
  TCP's flow control pushes back on the sender, as a full router queue does.

Every connection a worker opens through its link (claims, downloads, uploads, heartbeats)
shares the link's two directions, as on one home line. Bytes are counted per direction and
the bottleneck's busy intervals are kept, so the harness can say where a worker's time went.

Run as a process; one JSON command per line on stdin, one JSON answer per line on stdout:
  {"cmd": "add", "target": [host, port], "up_mbit": 20, "down_mbit": 50, "rtt_ms": 30}
      -> {"link": id, "port": listening port on 127.0.0.1}   (a rate of 0: unlimited)
  {"cmd": "stats"} -> {"t": wall time, "bytes": {id: {"up": n, "down": n}}}
  {"cmd": "busy"}  -> {"busy": {id: {"up": [[t0, t1], ...], "down": [...]}}} (wall times)
  {"cmd": "reset"} -> forgets the busy intervals (the byte counters keep counting)
It exits when stdin closes, so it never outlives the benchmark that started it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

CHUNK = 32 * 1024  # read size: 13 ms of a 20 Mbit/s uplink, so small messages wait little
MAX_IN_FLIGHT = 256  # chunks between the bottleneck and the far end (bounds memory)


class Direction:
    """One direction of a link: its bottleneck, and what it carried."""

    def __init__(self, mbit: float, buffer_s: float):
        self.rate = mbit * 1e6 / 8 if mbit > 0 else None  # bytes per second
        self.buffer_s = buffer_s
        self.free_at = 0.0  # loop time when everything queued so far has been sent
        self.bytes = 0
        self.busy: list[list[float]] = []  # merged [start, end] of sending, loop time

    async def admit(self, n: int, loop: asyncio.AbstractEventLoop) -> float:
        """Queue n bytes once the bottleneck's queue has room; the loop time at which they
        will have crossed it."""
        self.bytes += n
        if self.rate is None:
            return loop.time()
        while (wait := self.free_at - self.buffer_s - loop.time()) > 0:
            await asyncio.sleep(wait)
        start = max(loop.time(), self.free_at)
        self.free_at = start + n / self.rate
        if self.busy and start <= self.busy[-1][1] + 1e-6:
            self.busy[-1][1] = self.free_at
        else:
            self.busy.append([start, self.free_at])
        return self.free_at


class Link:
    def __init__(self, target: tuple[str, int], up_mbit: float, down_mbit: float, rtt_ms: float):
        self.target = target
        self.delay = rtt_ms / 2000  # one way, seconds
        # A queue of 50 ms at the rate (at least two chunks): a claim behind an upload
        # waits tens of milliseconds, as behind a router with a modest buffer.
        self.up = Direction(up_mbit, max(0.05, 2 * CHUNK * 8 / max(up_mbit, 1e-9) / 1e6))
        self.down = Direction(down_mbit, max(0.05, 2 * CHUNK * 8 / max(down_mbit, 1e-9) / 1e6))


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    direction: Direction,
    delay: float,
    abort: asyncio.Event,
) -> None:
    """Carry one direction of a connection across the link; any error ends both."""
    loop = asyncio.get_running_loop()
    in_flight: asyncio.Queue = asyncio.Queue(MAX_IN_FLIGHT)

    async def deliver() -> None:
        while (item := await in_flight.get()) is not None:
            at, data = item
            if (wait := at - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(CHUNK):
            arrives = await direction.admit(len(data), loop) + delay
            await in_flight.put((arrives, data))
        await in_flight.put(None)
        await sender
    except (OSError, asyncio.IncompleteReadError):
        abort.set()
    finally:
        sender.cancel()


async def _serve_connection(link: Link, c_reader, c_writer) -> None:
    try:
        s_reader, s_writer = await asyncio.open_connection(*link.target)
    except OSError:
        c_writer.close()
        return
    abort = asyncio.Event()
    pumps = [
        asyncio.create_task(_pump(c_reader, s_writer, link.up, link.delay, abort)),
        asyncio.create_task(_pump(s_reader, c_writer, link.down, link.delay, abort)),
    ]
    both = asyncio.gather(*pumps, return_exceptions=True)
    aborted = asyncio.create_task(abort.wait())
    # Both directions closed in order, or either failed: then both sides are cut at once.
    await asyncio.wait([both, aborted], return_when=asyncio.FIRST_COMPLETED)
    for w in (c_writer, s_writer):
        w.close()
    for task in (*pumps, aborted):
        task.cancel()
    await asyncio.gather(both, aborted, return_exceptions=True)


class Links:
    """The links of one benchmark, and their control channel."""

    def __init__(self) -> None:
        self.links: list[Link] = []
        self.servers: list[asyncio.base_events.Server] = []
        loop = asyncio.get_running_loop()
        self.wall_offset = time.time() - loop.time()

    async def add(self, target, up_mbit, down_mbit, rtt_ms) -> dict:
        link = Link((target[0], int(target[1])), up_mbit, down_mbit, rtt_ms)
        server = await asyncio.start_server(
            lambda r, w: _serve_connection(link, r, w), "127.0.0.1", 0
        )
        self.links.append(link)
        self.servers.append(server)
        return {"link": len(self.links) - 1, "port": server.sockets[0].getsockname()[1]}

    def stats(self) -> dict:
        counts = {i: {"up": k.up.bytes, "down": k.down.bytes} for i, k in enumerate(self.links)}
        return {"t": time.time(), "bytes": counts}

    def busy(self) -> dict:
        off = self.wall_offset
        return {
            "busy": {
                i: {
                    name: [[a + off, b + off] for a, b in getattr(k, name).busy]
                    for name in ("up", "down")
                }
                for i, k in enumerate(self.links)
            }
        }

    def reset(self) -> dict:
        for k in self.links:
            k.up.busy.clear()
            k.down.busy.clear()
        return {"ok": True}


async def main() -> None:
    loop = asyncio.get_running_loop()
    links = Links()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := await stdin.readline():
        cmd = json.loads(line)
        match cmd.pop("cmd"):
            case "add":
                answer = await links.add(**cmd)
            case "stats":
                answer = links.stats()
            case "busy":
                answer = links.busy()
            case "reset":
                answer = links.reset()
            case other:
                answer = {"error": f"unknown command {other!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    os._exit(0)  # stdin closed: the benchmark is done (or gone); the OS closes every socket


if __name__ == "__main__":
    asyncio.run(main())
