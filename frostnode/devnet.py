# -*- test-case-name: tests.test_e2e_devnet -*-
"""
C{frostnode devnet}: a whole federation on this machine, for trying frostnode.

::

    frostnode devnet --nodes 5 --threshold 3 [--dir DIR] [--base-port P]

What it does, in order:

  1. B{Set up} N members in C{DIR} (default: a new directory under the
     system's temporary directory), exactly as operators would: C{frostnode
     init} for each (keys and a commented C{node.toml}), the members' address
     cards collected in C{DIR/cards/}, and every config listing all cards and
     the threshold.  Member I{i} (from 1) listens for peers on loopback port
     C{P + 2(i-1)} and for clients on C{P + 2(i-1) + 1}.  Timers are those of
     a demo, not of production: key generation may repeat after an hour
     (C{[dkg] min_spacing}) instead of 14 days, a round may take 15 s, links
     redial within 2 s.  The address is for C{regtest}: this key is not
     meant to hold coins.  C{DIR/devnet.json} records the layout, so running
     the command again with the same C{--dir} restarts the same federation
     (same keys, same epoch).
  2. B{Start} each member as its own C{twistd -n frostnode --config ...}
     process, with the Python running this command (so the same virtualenv),
     logging to C{DIR/nodeI/node.log}.  On Linux each child asks the kernel
     for C{SIGTERM} when this process dies (C{PR_SET_PDEATHSIG}), so not
     even a C{kill -9} of devnet leaves nodes behind.
  3. B{Wait} for the first key, asking every node for its status through the
     client library (L{frostnode.client.library}, the same Noise client port
     that C{frostnode-client} uses), and show progress: nodes answering,
     peer links up, nodes holding a key.
  4. B{Print} the federation key (internal key, Taproot output key, P2TR
     address) as the nodes report it (all must agree), and the
     C{frostnode-client} commands to talk to the federation.
  5. B{Stop} every node on Ctrl-C or SIGTERM: each gets SIGTERM (C{twistd}
     shuts down cleanly), and this command returns once all have exited
     (SIGKILL after L{STOP_TIMEOUT} seconds for any that hang).  If a node
     exits by itself, or no key appears within C{--timeout}, the others are
     stopped too and the exit status is 1.

The reactor, the process spawner and the output are parameters of
L{Devnet}, so tests drive it in their own reactor.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.error import ProcessExitedAlready, ReactorNotRunning
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.python.failure import Failure

from frostnode.cli import CONFIG_NAME, init_member
from frostnode.config import ConfigError, load_config
from frostnode.keys import KeyFileError, load_node_keys, own_card

MANIFEST = "devnet.json"
DEFAULT_BASE_PORT = 19500
#: Seconds a node may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 15.0
#: Seconds between status rounds while waiting.
POLL_INTERVAL = 0.5
#: Seconds between progress lines when nothing changes.
HEARTBEAT = 5.0

#: Runs twistd in a child that dies with its parent (Linux: PR_SET_PDEATHSIG),
#: exits at once if the parent is already gone, and leaves the terminal's
#: process group, so that Ctrl-C is devnet's to handle (a node that stopped by
#: itself on the same Ctrl-C would look like a crash).
LAUNCHER = """\
import os, signal, sys
parent = int(os.environ.get("FROSTNODE_DEVNET_PARENT", "0"))
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except Exception:
    pass
if parent and os.getppid() != parent:
    sys.exit("frostnode devnet: the devnet process is gone; not starting")
os.setpgid(0, 0)  # out of the terminal's foreground group: Ctrl-C reaches devnet, which stops us in order
from twisted.scripts.twistd import run
sys.argv[0] = "twistd"
run()
"""

#: What the demo's configs add to what `frostnode init` writes.
DEMO_SETTINGS = """
[dkg]
# Demo timers: production keeps the 14-day minimum spacing.
interval = "1d"
min_spacing = "1h"
join_grace = "10m"
round_timeout = "15s"
retry_delay = "10s"
"""


def default_threshold(nodes: int) -> int:
    """A majority: any two signing sets share a member."""
    return nodes // 2 + 1


class DevnetOptions(usage.Options):
    synopsis = "[--nodes N] [--threshold T] [--dir DIR] [--base-port P]"
    longdesc = ("Start a local federation: N members as separate twistd processes on loopback, wait for their "
                "first key, print it and how to use it; Ctrl-C stops them all.  Run it again with the same "
                "--dir to restart that federation.")
    optParameters = [
        ["nodes", "n", None, "Number of members (default 5; with an existing --dir, its own).", int],
        ["threshold", "t", None, "Signing threshold (default: a majority of the members).", int],
        ["dir", "d", None, "Directory for the members' keys, configs and logs (default: a new temporary one)."],
        ["base-port", "p", None, f"First loopback port (default {DEFAULT_BASE_PORT}); member i uses P+2(i-1) "
                                 "for peers and the next for clients.", int],
        ["timeout", None, 180.0, "Seconds to wait for the first key.", float],
    ]

    def postOptions(self) -> None:
        if self["nodes"] is not None and not 2 <= self["nodes"] <= 100:
            raise usage.UsageError("--nodes must be between 2 and 100")
        if self["threshold"] is not None and self["threshold"] < 1:
            raise usage.UsageError("--threshold must be at least 1")
        if self["nodes"] is not None and self["threshold"] is not None and self["threshold"] > self["nodes"]:
            raise usage.UsageError("--threshold must not exceed --nodes")
        if self["base-port"] is not None and not 1024 <= self["base-port"] <= 65535 - 2 * (self["nodes"] or 5):
            raise usage.UsageError("--base-port must leave room for two ports per member below 65536")
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be positive")


class DevnetError(Exception):
    """The federation cannot be set up or run; the message says why, in one line."""


# -- set-up ----------------------------------------------------------------------------------


class Layout:
    """
    Where the members of a devnet live and listen.

    @ivar directory: the devnet's directory.
    """

    def __init__(self, directory: Path, nodes: int, threshold: int, base_port: int) -> None:
        self.directory = directory
        self.nodes = nodes
        self.threshold = threshold
        self.base_port = base_port

    def member(self, i: int) -> Path:
        return self.directory / f"node{i + 1}"

    def config(self, i: int) -> Path:
        return self.member(i) / CONFIG_NAME

    def card(self, i: int) -> Path:
        return self.directory / "cards" / f"node{i + 1}.json"

    def peer_port(self, i: int) -> int:
        return self.base_port + 2 * i

    def client_port(self, i: int) -> int:
        return self.base_port + 2 * i + 1

    def log(self, i: int) -> Path:
        return self.member(i) / "node.log"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    def manifest(self) -> dict:
        return {"nodes": self.nodes, "threshold": self.threshold, "base_port": self.base_port}


def resolve_layout(opts: DevnetOptions) -> tuple[Layout, bool]:
    """
    The layout the options ask for, and whether it must be created (C{True})
    or already exists (an earlier devnet in C{--dir}).

    @raise DevnetError: options that contradict an existing devnet, or a
        directory that holds something else.
    """
    if opts["dir"] is None:
        directory = Path(tempfile.mkdtemp(prefix="frostnode-devnet-"))
    else:
        directory = Path(opts["dir"]).expanduser().absolute()
    manifest = directory / MANIFEST
    if manifest.exists():
        try:
            saved = json.loads(manifest.read_text())
            layout = Layout(directory, int(saved["nodes"]), int(saved["threshold"]), int(saved["base_port"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DevnetError(f"{manifest} is not a devnet manifest ({e})") from None
        for name, have in (("nodes", layout.nodes), ("threshold", layout.threshold), ("base-port", layout.base_port)):
            if opts[name] is not None and opts[name] != have:
                raise DevnetError(f"{directory} holds a devnet with --{name} {have}, not {opts[name]} "
                                  f"(use another --dir for a new federation)")
        return layout, False
    if directory.exists() and any(directory.iterdir()):
        raise DevnetError(f"{directory} is not empty and holds no {MANIFEST}: give a new or empty --dir")
    nodes = opts["nodes"] or 5
    threshold = opts["threshold"] or default_threshold(nodes)
    if threshold > nodes:
        raise DevnetError(f"--threshold {threshold} exceeds the {nodes} members")
    return Layout(directory, nodes, threshold, opts["base-port"] or DEFAULT_BASE_PORT), True


def create(layout: Layout) -> None:
    """
    Initialise every member with C{frostnode init}, collect their cards
    (with the client port, for C{frostnode-client --card}) and write
    configs listing all members and the threshold.

    @raise ConfigError, KeyFileError: as C{frostnode init} would.
    """
    layout.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (layout.directory / "cards").mkdir(exist_ok=True)
    for i in range(layout.nodes):
        init_member(layout.member(i), f"tcp:{layout.peer_port(i)}:interface=127.0.0.1", [],
                    f"tcp:{layout.client_port(i)}:interface=127.0.0.1", io.StringIO())
        config = load_config(layout.config(i))
        card = own_card(config, load_node_keys(config)).to_dict()
        card["client_addresses"] = [f"tcp:127.0.0.1:{layout.client_port(i)}"]
        layout.card(i).write_text(json.dumps(card, indent=2) + "\n")
    cards = json.dumps([str(layout.card(i)) for i in range(layout.nodes)])
    for i in range(layout.nodes):
        path = layout.config(i)
        text = path.read_text()
        text = text.replace("members = []", f"members = {cards}\nthreshold = {layout.threshold}\n"
                                            f"network = \"regtest\"          # a demo key: not for real coins")
        text = text.replace("[client]", "[client]\n# Loopback only; frostnode-client uses the cards in ../cards/.")
        text = text.replace("[peer]\n", "[peer]\nmax_reconnect_delay = \"2s\"      # redial quickly while the demo starts\n")
        path.write_text(text + DEMO_SETTINGS)
        load_config(path)  # the demo's edits make a valid config, or we stop here
    (layout.directory / MANIFEST).write_text(json.dumps(layout.manifest(), indent=2) + "\n")


def busy_ports(layout: Layout) -> list[int]:
    """The layout's ports that something on this machine already listens on."""
    busy = []
    for i in range(layout.nodes):
        for port in (layout.peer_port(i), layout.client_port(i)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
            finally:
                s.close()
    return busy


def client_command() -> str:
    """How to run C{frostnode-client} from here: its name if on C{PATH}, else its path beside this Python."""
    beside = Path(sys.executable).parent / "frostnode-client"
    found = shutil.which("frostnode-client")
    if found is not None and Path(found).resolve() == beside.resolve():
        return "frostnode-client"
    return str(beside) if beside.exists() else "frostnode-client"


# -- the node processes ------------------------------------------------------------------------


class NodeProcess(ProcessProtocol):
    """One member's twistd; remembers its stderr and fires L{ended} with how it exited."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.err = b""
        self.transport: Any = None
        self.ended: Deferred = Deferred()
        self.running = False

    @property
    def name(self) -> str:
        return f"node{self.index + 1}"

    def connectionMade(self) -> None:
        self.running = True

    def outReceived(self, data: bytes) -> None:
        pass  # twistd logs to --logfile; nothing is expected here

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-8192:]

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.ended.callback(reason.value)

    def signal(self, name: str) -> None:
        if self.running:
            try:
                self.transport.signalProcess(name)
            except ProcessExitedAlready:
                pass


def twistd_argv(config: Path, log: Path) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, "-n", "--pidfile=", f"--logfile={log}", "frostnode",
            "--config", str(config)]


# -- running ------------------------------------------------------------------------------------


class Devnet:
    """
    Runs the members of C{layout} until stopped.

    @param reactor: spawns the nodes, connects to them, keeps time.
    @param out: where progress and the result go.
    """

    def __init__(self, reactor: Any, layout: Layout, out: TextIO, timeout: float) -> None:
        self.reactor = reactor
        self.layout = layout
        self.out = out
        self.timeout = timeout
        self.processes: list[NodeProcess] = []
        self.clients: dict[int, Any] = {}
        self.failed: Optional[str] = None
        self._serving = False
        self._stopping: Optional[Deferred] = None
        #: Fires once every node has exited after L{stop}.
        self.stopped: Deferred = Deferred()

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # -- processes --

    def start(self) -> None:
        env = dict(os.environ, FROSTNODE_DEVNET_PARENT=str(os.getpid()))
        for i in range(self.layout.nodes):
            proto = NodeProcess(i)
            argv = twistd_argv(self.layout.config(i), self.layout.log(i))
            self.reactor.spawnProcess(proto, argv[0], argv, env=env, path=str(self.layout.member(i)))
            proto.ended.addCallback(self._ended, proto)
            self.processes.append(proto)

    def _ended(self, reason: BaseException, proto: NodeProcess) -> None:
        if self._stopping is not None:
            return
        detail = proto.err.decode("utf-8", "replace").strip().splitlines()
        why = detail[-1] if detail else f"{reason}"
        self.failed = f"{proto.name} exited unexpectedly: {why} (log: {self.layout.log(proto.index)})"
        if self._serving:
            # The key was reported: nobody polls any more, so stop the rest now.
            self.say(f"frostnode devnet: {self.failed}")
            self.stop()

    def stop(self) -> Deferred:
        """SIGTERM every node; fires when all have exited (SIGKILL after L{STOP_TIMEOUT})."""
        if self._stopping is not None:
            return self._stopping
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        running = [p for p in self.processes if p.running]
        if running:
            self.say(f"==> stopping {len(running)} node(s)")
        for p in running:
            p.signal("TERM")
        killer = self.reactor.callLater(STOP_TIMEOUT, self._kill)
        self._stopping = DeferredList([p.ended for p in self.processes], consumeErrors=True)

        def done(_: Any) -> None:
            if killer.active():
                killer.cancel()
            self.say(f"==> all nodes stopped; keys, configs and logs are in {self.layout.directory}")
            self.stopped.callback(None)

        self._stopping.addCallback(done)
        return self._stopping

    def _kill(self) -> None:
        for p in self.processes:
            if p.running:
                self.say(f"    {p.name} did not stop within {STOP_TIMEOUT:g}s; killing it")
                p.signal("KILL")

    # -- status --

    def _status(self, i: int) -> Deferred:
        """The status of node C{i}, or None if it does not answer (yet)."""
        from frostnode.client.library import NodeTarget, connect

        client = self.clients.get(i)
        if client is not None and not client.connected:
            self.clients.pop(i, None)
            client = None
        if client is None:
            target = NodeTarget.from_card_file(str(self.layout.card(i)))
            d = connect(self.reactor, target, connect_timeout=2.0, timeout=5.0)

            def connected(c: Any) -> Deferred:
                if self._stopping is not None:
                    c.close()
                    return succeed(None)
                self.clients[i] = c
                return c.status()

            d.addCallback(connected)
        else:
            d = client.status()
        d.addErrback(lambda _: None)
        return d

    @inlineCallbacks
    def wait_for_key(self) -> Any:
        """
        Poll every node until all hold a key; report progress.  Fires with the
        epoch, or None if a node died, the wait timed out, or we are stopping.
        """
        n = self.layout.nodes
        started = self.reactor.seconds()
        last_line, last_time = "", 0.0
        all_links = n * (n - 1)
        while self._stopping is None and self.failed is None:
            results = yield DeferredList([self._status(i) for i in range(n)], consumeErrors=True)
            statuses = [value if ok else None for ok, value in results]
            up = [s for s in statuses if s]
            links = sum(len(s.get("links_up") or ()) for s in up)
            keyed = [s["epoch"] for s in up if s.get("epoch")]
            line = (f"    nodes answering {len(up)}/{n}, peer links up {links}/{all_links}, "
                    f"nodes holding a key {len(keyed)}/{n}")
            now = self.reactor.seconds()
            if line != last_line or now - last_time >= HEARTBEAT:
                self.say(line + (f"  ({now - started:.0f}s)" if now - started >= 1 else ""))
                last_line, last_time = line, now
            if len(keyed) == n:
                return max(keyed)
            if now - started > self.timeout:
                self.failed = (f"no key after {self.timeout:g}s ({len(keyed)} of {n} nodes hold one); "
                               f"see the logs in {self.layout.directory}/node*/node.log")
                return None
            yield deferLater(self.reactor, POLL_INTERVAL, lambda: None)
        return None

    @inlineCallbacks
    def report_key(self) -> Any:
        """Ask every node for the federation key; all must agree.  Prints it and how to use it."""
        answers = []
        for i in sorted(self.clients):
            keys = yield self.clients[i].pubkey()
            answers.append(keys)
        distinct = {(k.epoch, k.internal_key, k.output_key) for k in answers}
        if len(distinct) != 1:
            self.failed = f"the nodes report {len(distinct)} different keys: {sorted(distinct)}"
            return
        k = answers[0]
        d = self.layout.directory
        client = f"{client_command()} --key {self.layout.client_key}"
        card = lambda i: d / "cards" / f"node{i}.json"  # noqa: E731
        last = self.layout.nodes
        self.say("")
        self.say(f"Federation key (epoch {k.epoch}, {self.layout.threshold}-of-{self.layout.nodes}, "
                 f"all {len(answers)} nodes agree):")
        self.say(f"  internal key   {k.internal_key.hex()}")
        self.say(f"  output key     {k.output_key.hex()}   (Taproot, BIP341 tweak with no script path)")
        self.say(f"  P2TR address   {k.address}   ({k.network}: a demo key, not for real coins)")
        self.say("")
        self.say("Talk to the federation through any node (each node's card is in cards/):")
        self.say(f"  {client} --card {card(1)} status")
        self.say(f"  echo hello | {client} --card {card(1)} submit demo/greetings")
        self.say(f"  {client} --card {card(last)} get --topic demo/greetings")
        self.say(f"  {client} --card {card(last)} pubkey")
        self.say("")
        self.say(f"Node logs: {d}/node*/node.log.  Press Ctrl-C to stop every node.")

    @inlineCallbacks
    def run(self) -> Any:
        """Start, wait, report; then keep running until L{stop}.  Fires with the exit status."""
        self.say(f"==> starting {self.layout.nodes} nodes ({self.layout.threshold}-of-{self.layout.nodes}) "
                 f"from {self.layout.directory}")
        self.start()
        self.say("==> waiting for the nodes, their links and the first distributed key generation (DKG)")
        epoch = yield self.wait_for_key()
        if epoch is not None:
            yield self.report_key()
        if self.failed is not None and self._stopping is None:
            self.say(f"frostnode devnet: {self.failed}")
            self.stop()
        self._serving = True
        yield self.stopped
        return 0 if self.failed is None else 1


def run_devnet(opts: DevnetOptions, out: TextIO, err: TextIO, reactor: Any = None) -> int:
    """The C{frostnode devnet} command: returns its exit status."""
    try:
        layout, new = resolve_layout(opts)
        if new:
            out.write(f"==> creating {layout.nodes} members in {layout.directory} (frostnode init, cards, configs)\n")
            out.flush()
            create(layout)
        busy = busy_ports(layout)
        if busy:
            raise DevnetError(f"ports {', '.join(map(str, busy))} are in use; choose another --base-port "
                              f"(this devnet uses {layout.base_port}..{layout.base_port + 2 * layout.nodes - 1})")
    except (DevnetError, ConfigError, KeyFileError, OSError) as e:
        err.write(f"frostnode devnet: {e}\n")
        return 1
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    devnet = Devnet(reactor, layout, out, opts["timeout"])
    status: list[int] = [1]

    def finished(code: int) -> None:
        status[0] = code
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping: Ctrl-C or SIGTERM

    def failed(f: Failure) -> None:
        err.write(f"frostnode devnet: {f.getErrorMessage()}\n")
        devnet.stop().addBoth(lambda _: finished(1))

    def start() -> None:
        d = devnet.run()
        d.addCallbacks(finished, failed)

    # Ctrl-C and SIGTERM stop the reactor; stop the nodes first, and wait for them.
    reactor.addSystemEventTrigger("before", "shutdown", devnet.stop)
    reactor.callWhenRunning(start)
    reactor.run()
    return status[0]
