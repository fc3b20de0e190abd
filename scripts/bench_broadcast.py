#!/usr/bin/env python3
"""
Benchmark of reliable broadcast (frostnode.broadcast) at n = 4, 10, 31, 64.

For a 1 KiB payload it prints, per n:
  - latency from broadcast() to delivery at every member (p50/p99), one
    broadcast at a time;
  - protocol records, frames and bytes per broadcast (over TCP: Noise frames
    and wire bytes, acks included; in memory: links payloads, one batch per
    peer per turn);
  - CPU microseconds per record handled (process CPU time / records decoded
    by all cores: everything the process did, links included);
  - all n members broadcasting at once (a DKG round): time until every
    member delivered all n broadcasts, and broadcasts per second.

Transport: real loopback TCP with Noise (frostnode.net.peers.PeerNetwork)
for n <= 10 when that module is available, else in-memory links
(frostnode.net.memory) on the real reactor; n >= 31 always in memory, all
members in this one process, so the figures there are the SUM of every
member's CPU (a real deployment spreads it over n machines).

Usage: bench_broadcast.py [--sizes 4,10,31,64] [--rounds N] [--concurrent K]
                          [--payload BYTES] [--transport auto|memory|tcp] [--tcp-nodelay]

Over TCP, Nagle's algorithm meets delayed ACKs on loopback and adds up to
tens of milliseconds to a broadcast's latency; --tcp-nodelay shows the
figures with it off (set through PeerNetwork's link observer).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import sys
import time
from typing import Any, Optional

from twisted.internet import defer, task

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from frostnode.broadcast.service import ReliableBroadcast  # noqa: E402
from frostnode.net.interfaces import CHANNEL_BROADCAST  # noqa: E402
from frostnode.net.memory import MemoryNetwork  # noqa: E402


class Federation:
    """n ReliableBroadcast services and a way to read link-level counters."""

    def __init__(self, nodes: list[ReliableBroadcast], transport: str, frames: Any, close: Any = None) -> None:
        self.nodes = nodes
        self.transport = transport
        self._frames = frames
        self._close = close

    def counters(self) -> tuple[int, int, int, int]:
        """(records sent, frames sent, bytes sent, records handled) so far."""
        records = sum(n.records_sent for n in self.nodes)
        frames, nbytes = self._frames()
        handled = sum(n.core.records_handled for n in self.nodes)
        return records, frames, nbytes, handled

    async def close(self) -> None:
        if self._close is not None:
            await self._close()


def members(n: int) -> list[bytes]:
    return sorted(hashlib.sha256(b"bench member %d" % i).digest() for i in range(n))


def memory_federation(reactor: Any, n: int) -> Federation:
    ms = members(n)
    net = MemoryNetwork(reactor, ms)
    nodes = [ReliableBroadcast(net.links(m), ms, reactor) for m in ms]
    return Federation(nodes, "in-memory links, one process",
                      lambda: (net.payloads_sent[CHANNEL_BROADCAST], net.bytes_sent[CHANNEL_BROADCAST]))


async def tcp_federation(reactor: Any, n: int, nodelay: bool = False) -> Optional[Federation]:
    """n PeerNetworks on loopback TCP + Noise in this process (None if the links layer is absent)."""
    try:
        from frostnode.identity import AddressCard, HostKeypair, MemberDirectory
        from frostnode.net.noise import generate_noise_private_key, noise_public_key
        from frostnode.net.peers import LinkConfig, PeerNetwork
    except ImportError:
        return None
    from twisted.internet.endpoints import AdoptedStreamServerEndpoint

    socks, cards, secrets = [], [], []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        host, noise = HostKeypair.generate(), generate_noise_private_key()
        cards.append(AddressCard.create(host, noise_public_key(noise), [f"tcp:127.0.0.1:{sock.getsockname()[1]}"]))
        secrets.append((host, noise))
        socks.append(sock)
    directory = MemberDirectory(cards)
    config = LinkConfig(initial_reconnect_delay=0.05, max_reconnect_delay=0.5)
    nets = []
    for sock, (host, noise) in zip(socks, secrets):
        endpoint = AdoptedStreamServerEndpoint(reactor, sock.detach(), socket.AF_INET)
        nets.append(PeerNetwork(reactor, host, noise, directory, endpoint, config))
    nodes = [ReliableBroadcast(net, directory.host_keys(), reactor) for net in nets]
    for net in nets:
        if nodelay:
            def up(peer: bytes, is_up: bool, net: Any = net) -> None:
                link = net.current_link(peer)
                if is_up and link is not None and hasattr(link.transport, "setTcpNoDelay"):
                    link.transport.setTcpNoDelay(True)
            net.add_link_observer(up)
        net.startService()
    await defer.gatherResults([net.when_all_connected() for net in nets])

    async def stop() -> None:
        await defer.gatherResults([net.stopService() for net in nets])

    return Federation(nodes, "loopback TCP + Noise, one process" + (", TCP_NODELAY" if nodelay else ""),
                      lambda: (sum(net.counters.frames_out for net in nets), sum(net.counters.bytes_out for net in nets)),
                      stop)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def bench(reactor: Any, n: int, args: argparse.Namespace) -> dict:
    fed: Optional[Federation] = None
    if args.transport in ("auto", "tcp") and n <= 10:
        fed = await tcp_federation(reactor, n, args.tcp_nodelay)
        if fed is None and args.transport == "tcp":
            raise SystemExit("frostnode.net.peers (loopback TCP + Noise) is not available")
    if fed is None:
        fed = memory_federation(reactor, n)
    payload = os.urandom(args.payload)
    nodes = fed.nodes
    rounds = args.rounds if n <= 10 else max(5, args.rounds // (4 if n <= 31 else 10))

    # One broadcast at a time: latency and per-broadcast costs.
    latencies = []
    r0 = fed.counters()
    for r in range(rounds):
        origin = nodes[r % n]
        tag = b"lat/%d" % r
        waits = [node.delivered(origin.links.local, tag) for node in nodes]
        t0 = time.perf_counter()
        origin.broadcast(tag, payload)
        await defer.gatherResults(waits)
        latencies.append(time.perf_counter() - t0)
    r1 = fed.counters()

    # All n at once, a few times: time to deliver everywhere, CPU per record.
    times = []
    c0 = fed.counters()
    cpu0 = time.process_time()
    for k in range(args.concurrent):
        tag = b"all/%d" % k
        waits = [node.delivered(origin.links.local, tag) for node in nodes for origin in nodes]
        t0 = time.perf_counter()
        for origin in nodes:
            origin.broadcast(tag, payload)
        await defer.gatherResults(waits)
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    c1 = fed.counters()
    await fed.close()
    handled = c1[3] - c0[3]
    return {
        "n": n,
        "transport": fed.transport,
        "p50_ms": 1000 * pct(latencies, 0.5),
        "p99_ms": 1000 * pct(latencies, 0.99),
        "records": (r1[0] - r0[0]) / rounds,
        "frames": (r1[1] - r0[1]) / rounds,
        "bytes": (r1[2] - r0[2]) / rounds,
        "us_per_record": 1e6 * cpu / max(1, handled),
        "all_at_once_s": statistics.median(times),
        "all_at_once_max_s": max(times),
        "bcast_per_s": n / statistics.median(times),
        "conc_frames": (c1[1] - c0[1]) / (n * args.concurrent),
        "conc_bytes": (c1[2] - c0[2]) / (n * args.concurrent),
        "rounds": rounds,
    }


async def main(reactor: Any, argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="4,10,31,64")
    p.add_argument("--rounds", type=int, default=200, help="sequential broadcasts for latency (fewer at n >= 31)")
    p.add_argument("--concurrent", type=int, default=3, help="all-at-once rounds")
    p.add_argument("--payload", type=int, default=1024)
    p.add_argument("--transport", choices=("auto", "memory", "tcp"), default="auto")
    p.add_argument("--tcp-nodelay", action="store_true",
                   help="set TCP_NODELAY on every link once it is up (the links do not, yet)")
    args = p.parse_args(argv)
    print(f"reliable broadcast benchmark: {args.payload}-byte payload, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cpus")
    header = (f"{'n':>3} {'p50 ms':>7} {'p99 ms':>7} {'records':>7} {'frames':>6} {'bytes':>8} "
              f"{'us/rec':>6} | {'all-at-once ms (max)':>20} {'bcast/s':>7} {'frames':>6} {'bytes':>8}  transport")
    print(header)
    for n in (int(x) for x in args.sizes.split(",")):
        r = await bench(reactor, n, args)
        print(f"{r['n']:>3} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['records']:>7.0f} {r['frames']:>6.0f} "
              f"{r['bytes']:>8.0f} {r['us_per_record']:>6.2f} | {1000 * r['all_at_once_s']:>10.1f} ({1000 * r['all_at_once_max_s']:.1f})"
              f" {r['bcast_per_s']:>7.0f} {r['conc_frames']:>6.0f} {r['conc_bytes']:>8.0f}  {r['transport']}", flush=True)
    print("Left of |: one broadcast at a time (latency to delivery at all members over "
          "sequential broadcasts; records, frames, bytes per broadcast summed over all members).\n"
          "Right of |: all n members broadcast at once; median (max) time until all n*n deliveries, "
          "and frames and bytes per broadcast.\n"
          "us/rec: process CPU per protocol record handled (all members of one process, links included) "
          "during the all-at-once rounds.\n"
          "Targets: n=10 p50 < 30 ms over TCP+Noise; n=64 all-at-once < 2 s; < 50 us/rec.")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
