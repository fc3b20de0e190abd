#!/usr/bin/env python3
"""
Benchmark of the federation's DKG (frostnode.dkg) end to end.

For each n (t = ceil(2n/3)) it runs one full DKG (round 1, shares, the
agreement round, certificate) with every member requesting it at once, and
prints:
  - wall time from the request to the last member's certified result;
  - process CPU time over the same span;
  - bytes and messages each member sent, on average: over TCP these are
    wire bytes (Noise frames, acknowledgements and keepalives included);
    in memory, links payloads (DKG and broadcast channels).

Transport: n <= 10 over real loopback TCP with Noise (PeerNetwork, one
reactor, every member in this process); larger n over the in-memory links of
the broadcast benchmark (frostnode.net.memory), all members in this one
process driven by a task.Clock, so the wall time there is the SUM of every
member's work: a deployment spreads it over n machines.  Links are up before
the clock starts; storage is in memory (fsyncs excluded).

Usage: bench_dkg.py [--full] [--sizes 4,10,31] [--tcp-max 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import AdoptedStreamServerEndpoint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from frostnode.broadcast.service import ReliableBroadcast  # noqa: E402
from frostnode.dkg.driver import DkgService  # noqa: E402
from frostnode.dkg.run import RunConfig  # noqa: E402
from frostnode.dkg.scheduler import SchedulePolicy  # noqa: E402
from frostnode.dkg.session import Timeouts  # noqa: E402
from frostnode.dkg.storage import MemoryDkgStorage  # noqa: E402
from frostnode.identity import AddressCard, HostKeypair, MemberDirectory  # noqa: E402
from frostnode.net.memory import MemoryNetwork  # noqa: E402

CONFIG = RunConfig(Timeouts(round1=600.0, round2=600.0, reveal=300.0, agreement=600.0))
POLICY = SchedulePolicy(interval=None)


def check(results: list, n: int) -> None:
    certs = {r.certificate.encode() for r in results}
    if len(certs) != 1 or not all(r.ok and r.member for r in results) or len(results) != n:
        raise SystemExit(f"n={n}: the DKG did not give every member the same certified key")


def bench_memory(n: int) -> dict[str, Any]:
    clock = task.Clock()
    clock.advance(1_700_000_000)
    hosts = sorted((HostKeypair.generate() for _ in range(n)), key=lambda h: h.public)
    members = [h.public for h in hosts]
    net = MemoryNetwork(clock, members)
    services = []
    for h in hosts:
        links = net.links(h.public)
        bc = ReliableBroadcast(links, members, clock)
        bc.startService()
        svc = DkgService(h, lambda: members, links, bc, MemoryDkgStorage(), clock, POLICY, CONFIG, schedule=False)
        svc.startService()
        services.append(svc)
    results: list = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    for svc in services:
        svc.request_dkg().addCallback(results.append)
    while len(results) < n:
        calls = clock.getDelayedCalls()
        nxt = min(c.getTime() for c in calls)
        if nxt > clock.seconds():
            raise SystemExit(f"n={n}: stalled waiting for a timeout at +{nxt - clock.seconds():.0f} s")
        clock.advance(0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    check(results, n)
    return {"n": n, "t": results[0].certificate.params.threshold, "transport": "memory (one process)",
            "wall": wall, "cpu": cpu, "bytes": sum(net.bytes_sent.values()) / n,
            "messages": sum(net.payloads_sent.values()) / n}


def _listen(reactor: Any) -> tuple[AdoptedStreamServerEndpoint, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    return AdoptedStreamServerEndpoint(reactor, sock.detach(), socket.AF_INET), port


async def bench_tcp(reactor: Any, n: int) -> dict[str, Any]:
    from frostnode.net.noise import generate_noise_private_key, noise_public_key
    from frostnode.net.peers import LinkConfig, PeerNetwork

    sockets = [_listen(reactor) for _ in range(n)]
    members = []
    for _, port in sockets:
        host, noise = HostKeypair.generate(), generate_noise_private_key()
        members.append((host, noise, AddressCard.create(host, noise_public_key(noise), [f"tcp:127.0.0.1:{port}"])))
    directory = MemberDirectory(c for _, _, c in members)
    config = LinkConfig(ack_delay=0.002, initial_reconnect_delay=0.05, max_reconnect_delay=0.5)
    nets, bcs, services = [], [], []
    for (host, noise, _), (endpoint, _) in zip(members, sockets):
        net = PeerNetwork(reactor, host, noise, directory, endpoint, config)
        bc = ReliableBroadcast(net, directory.host_keys(), reactor)
        svc = DkgService(host, directory, net, bc, MemoryDkgStorage(), reactor, POLICY, CONFIG, schedule=False)
        for s in (net, bc, svc):
            s.startService()
        nets.append(net)
        bcs.append(bc)
        services.append(svc)
    try:
        await defer.gatherResults([net.when_connected(k) for net in nets for k in net.peers()])
        bytes0 = sum(net.counters.bytes_out for net in nets)
        msgs0 = sum(net.counters.frames_out for net in nets)
        cpu0, t0 = time.process_time(), time.perf_counter()
        results = await defer.gatherResults([svc.request_dkg() for svc in services])
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        check(results, n)
        return {"n": n, "t": results[0].certificate.params.threshold, "transport": "loopback TCP + Noise",
                "wall": wall, "cpu": cpu, "bytes": (sum(net.counters.bytes_out for net in nets) - bytes0) / n,
                "messages": (sum(net.counters.frames_out for net in nets) - msgs0) / n}
    finally:
        for s in services + bcs:
            s.stopService()
        await defer.gatherResults([net.stopService() for net in nets])


def report(r: dict[str, Any]) -> None:
    print(f"n={r['n']:>4} t={r['t']:>3}  {r['transport']:<22} wall {r['wall']:8.3f} s   cpu {r['cpu']:8.3f} s   "
          f"per member: {r['bytes'] / 1024:9.1f} KiB in {r['messages']:8.0f} frames/payloads", flush=True)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.full and 100 not in sizes:
        sizes.append(100)
    for n in sizes:
        if n <= args.tcp_max:
            report(await bench_tcp(reactor, n))
        else:
            report(bench_memory(n))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="add n = 100")
    p.add_argument("--sizes", default="4,10,31")
    p.add_argument("--tcp-max", type=int, default=10, help="largest n run over loopback TCP")
    args = p.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
