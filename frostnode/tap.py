# -*- test-case-name: tests.test_plugin -*-
"""
The twistd plugin's options and wiring: C{twistd -n frostnode --config node.toml}.

Everything that can be wrong with a node's setup (config file, data
directory, key files, membership, the store's files, validation schemes, Tor's key and executable) is
checked in L{Options.postOptions}, before twistd installs a reactor or opens
a log, so that a bad setup costs one line and a non-zero exit instead of a
traceback from a half-started service.  A missing C{--config} is a
command-line mistake and raises C{UsageError}, for which twistd prints its
usage text; a bad config file is not, and twistd's usage text would bury the
one line that matters, so it exits with
C{SystemExit("frostnode: <file>: <key> <problem>")} instead.

L{build_node} is the one place where the node's layers are put together, in
dependency order, each as a child service of L{Node} and as an attribute of
it, so tests can build a node without twistd and layers can find each other:

  1. C{store}: the LMDB environment (L{Database}) with the key store, the
     nonce pool and the replicated log over it;
  2. C{tor} (with C{[tor]}): first, because the links dial C{.onion}
     members through it; it publishes the peer (and client) port once they
     are bound;
  3. C{peers}: the member links (L{PeerNetwork}, on C{[peer] listen});
  4. C{broadcast}: reliable broadcast over the links (L{ReliableBroadcast});
  5. the protocols over links and broadcast: C{dkg} (L{DkgService}, whose
     schedule starts the first DKG as soon as the node runs, since a new
     federation has no key), C{sync} (L{SyncService}, which also applies
     the log's retention) and C{signing} (L{SigningService});
  6. the ports facing outside: C{client} (the Noise client port and, with
     C{[http]}, the HTTP API, in front of one L{NodeAPI}) and C{metrics}.

Each C{*_config} function below maps the config's sections onto one layer's
own settings, so that the mapping is tested as data.

Shutdown: L{Node.stopService} stops every other layer first and waits for
them, then closes the store, whose writer lets in-flight LMDB transactions
commit before the environment closes.  (The store also closes itself
before reactor shutdown, see L{frostnode.store.db}; under twistd that runs
alongside the node's own shutdown, so a layer that tries a new write while
stopping is refused, never half-written.)

Daemon mode is refused: the store's writer thread starts when the store
opens, in C{makeService}, and twistd forks to daemonise after that, which
leaves the child without the thread.  Run C{twistd -n} under a supervisor
(systemd, runit) instead.

Log events, one per meaningful step, all with named fields: start (members,
threshold), C{running} once the reactor runs and the ports are bound (with
their port numbers: the line to wait for), each peer link up or down (with
the peer's full host key and how many links are up), all links up, stop.
The layers log their own steps (DKG phases and exclusions with the culprit,
signing outcomes, rejected input with its reason).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import lmdb
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from frostnode import logging as node_logging
from frostnode.broadcast.bracha import BrachaConfig
from frostnode.broadcast.service import ReliableBroadcast
from frostnode.client.service import ClientService, build_client_service
from frostnode.config import BROADCAST_FRAMING, Config, ConfigError, check_data_dir, load_config
from frostnode.dkg.driver import DkgService
from frostnode.dkg.run import RunConfig
from frostnode.dkg.scheduler import SchedulePolicy
from frostnode.dkg.session import Timeouts
from frostnode.dkg.storage import KeyStoreDkgStorage
from frostnode.keys import NodeKeys, check_membership, load_node_keys
from frostnode.metrics import MetricsService, Registry, watch_peer_network, watch_sync_lag
from frostnode.net.peers import LinkConfig, PeerNetwork
from frostnode.signing.commands import register_signing_commands
from frostnode.signing.service import SigningConfig, SigningService
from frostnode.store.checkpoints import CheckpointStore
from frostnode.store.db import Database, StoreService
from frostnode.store.errors import StoreError
from frostnode.store.keys import KeyStore
from frostnode.store.log import DataLog, LogLimits, Retention
from frostnode.store.nonces import NonceStore
from frostnode.sync.service import SyncConfig, SyncService
from frostnode.tor import OnionPort, TorService, check_tor_config
from frostnode.validation.interface import DataLogView
from frostnode.validation.registry import LoadedScheme, SchemeLoadError, load_schemes

#: The broadcast service's soft cap on one links payload (its own default).
BROADCAST_BATCH_BYTES = 60 * 1024


class Options(usage.Options):
    synopsis = "--config node.toml"
    longdesc = ("Run a frostnode federation member. The configuration file is described in "
                "docs/configuration.rst; create one, with the member's keys, with `frostnode init`.")
    optParameters = [
        ["config", "c", None, "The node's TOML configuration file (required)."],
    ]

    #: Set by L{postOptions}: the validated configuration, the node's keys
    #: and its validation schemes.
    node_config: Config
    node_keys: NodeKeys
    node_schemes: dict[str, LoadedScheme]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required: the node's TOML file (create one with: frostnode init)")
        parent = getattr(self, "parent", None)
        if parent is not None and hasattr(parent, "get") and not parent.get("nodaemon", True):
            raise SystemExit("frostnode: run it in the foreground, `twistd -n frostnode --config ...` (under a "
                             "supervisor such as systemd to run it in the background): the store's writer thread "
                             "does not survive twistd's daemonising fork")
        try:
            self.node_config, self.node_keys, self.node_schemes = load_node(self["config"])
        except ConfigError as e:
            raise SystemExit(f"frostnode: {e}") from None


def load_node(path: str) -> tuple[Config, NodeKeys, dict[str, LoadedScheme]]:
    """
    Everything needed to start a node, checked: the config at C{path}, its
    data directory and store, both key files, this node's place among the
    members, the link settings and the validation schemes.

    @raise ConfigError: naming the file and key at fault.
    """
    config = load_config(path)
    check_data_dir(config)
    keys = load_node_keys(config)
    check_membership(config, keys)
    link_config(config)
    check_tor_config(config)
    check_store(config)
    schemes = load_validation(config)
    return config, keys, schemes


def link_config(config: Config) -> LinkConfig:
    """
    The peer links' limits and timers from C{[peer]} and C{[limits]}; the
    links' other settings keep their defaults.

    @raise ConfigError: if the links refuse the combination.
    """
    try:
        return LinkConfig(
            max_message_size=config.limits.max_message_size,
            peer_queue_size=config.limits.peer_queue_size,
            handshake_timeout=config.peer.handshake_timeout,
            idle_timeout=config.peer.idle_timeout,
            keepalive_interval=config.peer.keepalive_interval,
            max_reconnect_delay=config.peer.max_reconnect_delay,
        )
    except ValueError as e:
        raise config.error("[peer]", f"and [limits] make invalid link settings: {e}") from None


def broadcast_config(config: Config, members: int) -> tuple[BrachaConfig, int]:
    """
    The broadcast core's limits and the driver's batch size from C{[limits]}.

    C{max_pending_broadcasts} bounds instances in progress over the whole
    federation, so each member's share of it (at least 16) caps both the
    confirmed instances charged to one originator and the unconfirmed ones
    one member may speak in.  A payload is at most C{max_broadcast_size};
    batches stay at the driver's 60 KiB unless links messages are smaller.

    @return: the core's config and C{max_batch_bytes}.
    """
    limits = config.limits
    per_member = max(16, math.ceil(limits.max_pending_broadcasts / max(members, 1)))
    core = BrachaConfig(
        max_payload=limits.max_broadcast_size,
        max_open_per_origin=per_member,
        max_unconfirmed_per_member=per_member,
    )
    return core, max(1, min(BROADCAST_BATCH_BYTES, limits.max_message_size - BROADCAST_FRAMING))


def dkg_settings(config: Config) -> tuple[SchedulePolicy, RunConfig]:
    """
    The DKG's schedule and run limits from C{[dkg]}.  Every phase may take
    C{round_timeout}, except the reveal after a complaint (one message from
    one member), which gets half.
    """
    d = config.dkg
    policy = SchedulePolicy(interval=d.interval, min_spacing=d.min_spacing, join_grace=d.join_grace,
                            retry_delay=d.retry_delay)
    timeouts = Timeouts(round1=d.round_timeout, round2=d.round_timeout, reveal=d.round_timeout / 2,
                        agreement=d.round_timeout)
    return policy, RunConfig(timeouts, max_attempts=d.max_attempts)


def sync_config(config: Config) -> SyncConfig:
    """
    Replication limits from C{[limits]} and C{[store]}: a batch may fill a
    whole broadcast (so one record of C{[store] max_payload} always fits,
    see L{frostnode.config}) and a catch-up page a whole link message.
    """
    return SyncConfig(max_batch_bytes=config.limits.max_broadcast_size,
                      max_page_bytes=min(SyncConfig.max_page_bytes, config.limits.max_message_size),
                      prune_interval=config.store.prune_interval)


def signing_config(config: Config) -> SigningConfig:
    s = config.signing
    return SigningConfig(session_timeout=s.session_timeout, request_timeout=s.request_timeout,
                         checkpoint_interval=s.checkpoint_interval, misbehaving_for=s.misbehaving_for,
                         sign_request_rate=s.sign_request_rate, sign_request_burst=s.sign_request_burst,
                         nonce_reuse_after=s.nonce_reuse_after)


def log_limits(config: Config) -> LogLimits:
    return LogLimits(max_payload=config.store.max_payload, max_range=config.store.max_range)


def retention(config: Config) -> Retention:
    return Retention(max_age=config.store.retention_age, max_per_origin=config.store.retention_per_origin)


def open_store(config: Config, reactor: Any = None) -> Database:
    """
    The node's LMDB environment in C{[node] data_dir}.

    @param reactor: for asynchronous writes; without one, only synchronous
        writes work (checks, tools).
    @raise ConfigError: naming C{[node] data_dir} when the store's files are
        not owner-only, are in use by another process, or cannot be opened.
    """
    try:
        return Database.open(config.node.data_dir, reactor=reactor, map_size=config.store.map_size,
                             max_map_size=config.store.max_map_size)
    except StoreError as e:
        raise config.error("[node] data_dir", f"store cannot be opened: {e}") from None
    except (lmdb.Error, OSError) as e:
        raise config.error("[node] data_dir", f"store in {str(config.node.data_dir)!r} cannot be opened: {e}") from None


def check_store(config: Config) -> None:
    """
    Open and close the store once, so that a locked or unprotected store
    stops the node with one line before twistd starts anything.

    @raise ConfigError: as L{open_store}.
    """
    open_store(config).close_sync()


def load_validation(config: Config) -> dict[str, LoadedScheme]:
    """
    The built-in validation schemes and those of C{[validation] schemes}.

    @raise ConfigError: naming the entry that cannot be loaded, and why.
    """
    try:
        return load_schemes(config.validation.schemes)
    except SchemeLoadError as e:
        entries = config.validation.schemes
        if e.spec in entries:
            key = f"[validation] schemes[{entries.index(e.spec)}]"
            raise config.error(key, f"({e.spec!r}) {e.problem}") from None
        raise config.error("[validation] schemes", e.problem) from None


class Node(MultiService):
    """
    One federation member's services.  Attributes name the layers' services
    and stores (C{None} until a layer exists or when the config disables it).

    @ivar config: the validated configuration.
    @ivar keys: this node's secret keys.
    @ivar directory: the current members.
    @ivar reactor: the reactor every layer uses (time, network).
    @ivar db: the LMDB environment.
    @ivar store: the service that closes C{db}, last.
    @ivar keystore: DKG epochs and sessions.
    @ivar nonces: the preprocessed nonce pool.
    @ivar datalog: the replicated log.
    @ivar schemes: validation schemes by name.
    @ivar peers: the member-to-member links.
    @ivar broadcast: reliable broadcast over C{peers}.
    @ivar metrics: the node's metrics registry, when C{[metrics]} is enabled.
    @ivar metrics_service: the metrics endpoint, when enabled.
    @ivar dkg: key generation (driver and scheduler).
    @ivar sync: the replicated log's broadcast and catch-up.
    @ivar signing: threshold signing.
    @ivar client: the client layer: C{client.port} (Noise) and C{client.http}
        (the local HTTP API), each C{None} when disabled.
    @ivar tor: onion services and Tor dialling, when C{[tor]} is enabled.
    """

    log = Logger()

    def __init__(self, config: Config, keys: NodeKeys, reactor: Any) -> None:
        super().__init__()
        self.setName("node")
        self.config = config
        self.keys = keys
        self.reactor = reactor
        self.directory = config.member_directory()
        self.db: Optional[Database] = None
        self.store: Optional[StoreService] = None
        self.keystore: Optional[KeyStore] = None
        self.nonces: Optional[NonceStore] = None
        self.datalog: Optional[DataLog] = None
        self.schemes: Mapping[str, LoadedScheme] = {}
        self.peers: Optional[PeerNetwork] = None
        self.broadcast: Optional[ReliableBroadcast] = None
        self.metrics: Optional[Registry] = None
        self.metrics_service: Optional[MetricsService] = None
        self.dkg: Optional[DkgService] = None
        self.sync: Optional[SyncService] = None
        self.signing: Optional[SigningService] = None
        self.client: Optional[ClientService] = None
        self.tor: Optional[TorService] = None
        self._all_up = False

    @property
    def host_key(self) -> str:
        return self.keys.host.public.hex()

    def startService(self) -> None:
        self.log.info(
            "frostnode {host_key} starting: {members} members, threshold {threshold}, "
            "ciphersuite {ciphersuite}, data in {data_dir}",
            host_key=self.host_key,
            members=len(self.directory),
            threshold=self.config.federation.threshold,
            ciphersuite=self.config.federation.ciphersuite,
            data_dir=str(self.config.node.data_dir),
        )
        super().startService()
        # twistd starts services before the reactor runs (and before it
        # handles SIGTERM): "running" is the line that says the node is up.
        self.reactor.callWhenRunning(self._running)

    # -- ports -------------------------------------------------------------------

    def _ports(self) -> dict[str, Any]:
        """The services with a port, by the name the "running" line gives it."""
        client = self.client
        ports = {"peer_port": self.peers, "client_port": client.port if client is not None else None,
                 "http_port": client.http if client is not None else None, "metrics_port": self.metrics_service}
        return {name: s for name, s in ports.items() if s is not None and hasattr(s, "when_listening")}

    def _running(self) -> None:
        if not self.running:
            return
        ports = self._ports()
        names = list(ports)
        waits = [ports[name].when_listening() for name in names]
        DeferredList(waits, consumeErrors=True).addCallback(self._listening, names)

    def _listening(self, results: list[tuple[bool, Any]], names: list[str]) -> None:
        bound: dict[str, Any] = {}
        for name, (ok, value) in zip(names, results):
            if ok:
                host = value.getHost()
                bound[name] = getattr(host, "port", str(host))
            else:
                # The layer logged why; the node still dials out and serves the rest.
                bound[name] = None
                self.log.error("frostnode {host_key} cannot open its {port_name}: {error}", host_key=self.host_key,
                               port_name=name.replace("_", " "), error=value.getErrorMessage())
        fmt = "frostnode {host_key} running" + "".join(
            f", {name.replace('_', ' ')} {{{name}}}" for name in names if bound[name] is not None)
        self.log.info(fmt, host_key=self.host_key, **bound)

    # -- peers ---------------------------------------------------------------------

    def _link_changed(self, peer: bytes, up: bool) -> None:
        assert self.peers is not None
        connected = len(self.peers.connected())
        total = len(self.peers.peers())
        if up:
            self.log.info("peer {peer} up ({links_up} of {peers} links up)", peer=peer.hex(), links_up=connected,
                          peers=total)
        else:
            self.log.info("peer {peer} down ({links_up} of {peers} links up)", peer=peer.hex(), links_up=connected,
                          peers=total)
        if connected == total and not self._all_up:
            self._all_up = True
            self.log.info("all {peers} peer links up", peers=total)
        elif connected < total:
            self._all_up = False

    # -- shutdown --------------------------------------------------------------------

    def stopService(self) -> Deferred:
        """Stop every layer, then (once they all stopped) close the store."""
        self.log.info("frostnode {host_key} stopping", host_key=self.host_key)
        Service.stopService(self)
        layers = [s for s in reversed(list(self)) if s is not self.store]
        d = DeferredList([maybeDeferred(s.stopService) for s in layers], consumeErrors=True)
        d.addCallback(self._layers_stopped)
        return d

    def _layers_stopped(self, results: list[tuple[bool, Any]]) -> Deferred:
        for ok, value in results:
            if not ok:
                self.log.failure("a service failed to stop cleanly", value)
        d = maybeDeferred(self.store.stopService) if self.store is not None else maybeDeferred(lambda: None)
        d.addCallback(lambda _: self.log.info("frostnode {host_key} stopped", host_key=self.host_key))
        return d


def build_node(config: Config, keys: NodeKeys, reactor: Any,
               schemes: Optional[Mapping[str, LoadedScheme]] = None,
               tor_options: Optional[Mapping[str, str]] = None) -> Node:
    """
    Put a node together from its checked configuration and keys.  Layers are
    added here, in dependency order, each as a child service of the node.

    @param schemes: the validation schemes (default: loaded from the config).
    @param tor_options: extra options for a launched tor (tests: C{DisableNetwork}).
    @raise ConfigError: if the store cannot be opened or a scheme loaded.
    """
    node = Node(config, keys, reactor)
    host = keys.host.public
    members = node.directory.host_keys()

    # State: first in, last out (see Node.stopService).
    node.db = open_store(config, reactor)
    node.store = StoreService(node.db)
    node.store.setName("store")
    node.store.setServiceParent(node)
    node.keystore = KeyStore(node.db)
    node.nonces = NonceStore(node.db)
    node.datalog = DataLog(node.db, host, limits=log_limits(config), retention=retention(config))
    node.schemes = dict(schemes) if schemes is not None else load_validation(config)

    # Tor first: the links dial .onion members through it.
    if config.tor.enabled:
        onions = [OnionPort(config.tor.onion_port, lambda: node.peers.when_listening())]
        if config.tor.publish_client and config.client.enabled:
            onions.append(OnionPort(config.tor.client_onion_port, lambda: node.client.port.when_listening()))
        node.tor = TorService(reactor, config.tor, onions, extra_options=tor_options)
        node.tor.setServiceParent(node)

    # Links and broadcast.
    node.peers = PeerNetwork(reactor, keys.host, keys.noise.secret, node.directory,
                             serverFromString(reactor, config.peer.listen), link_config(config),
                             endpoint_factory=node.tor.endpoint_factory if node.tor is not None else None)
    node.peers.setName("peers")
    node.peers.add_link_observer(node._link_changed)
    node.peers.setServiceParent(node)
    core, batch_bytes = broadcast_config(config, len(members))
    node.broadcast = ReliableBroadcast(node.peers, members, reactor, config=core, max_batch_bytes=batch_bytes)
    node.broadcast.setName("broadcast")
    node.broadcast.setServiceParent(node)

    # Protocols.
    policy, run_config = dkg_settings(config)
    threshold = config.federation.threshold
    assert threshold is not None  # check_membership: members are listed, so is the threshold
    node.dkg = DkgService(keys.host, node.directory, node.peers, node.broadcast, KeyStoreDkgStorage(node.keystore),
                          reactor, policy, run_config, threshold=lambda n: threshold)
    node.dkg.setName("dkg")
    node.dkg.setServiceParent(node)
    node.sync = SyncService(node.datalog, node.peers, node.broadcast, keys.host, node.directory, reactor,
                            sync_config(config))
    node.sync.setName("sync")
    node.sync.setServiceParent(node)
    node.signing = SigningService(node.peers, node.directory, keys.host, node.keystore, node.nonces,
                                  DataLogView(node.datalog), node.schemes, reactor, signing_config(config))
    node.signing.keep_checkpoints(CheckpointStore(node.db))
    node.signing.setName("signing")
    node.signing.setServiceParent(node)
    # A new or outranking certified key reaches signing as soon as it is on disk.
    node.dkg.observe_keys(node.signing.epochs_changed)

    # Ports facing outside.
    node.client = build_client_service(config, keys.noise.secret, node.sync, reactor, keystore=node.keystore,
                                       directory=node.directory, links=node.peers,
                                       network=config.federation.network)
    node.client.setServiceParent(node)
    register_signing_commands(node.client.api, node.signing, node.schemes)
    if config.metrics.enabled:
        node.metrics = Registry()
        watch_node(node.metrics, node)
        node.metrics_service = MetricsService(node.metrics, serverFromString(reactor, config.metrics.listen),
                                              config.metrics.listen)
        node.metrics_service.setName("metrics")
        node.metrics_service.setServiceParent(node)
    return node


def watch_node(registry: Registry, node: Node) -> None:
    """
    Metrics read from the layers' own counters when scraped: the links
    (L{watch_peer_network}), the sync lag, signatures issued and failed,
    and the epoch of the newest usable key.
    """
    watch_peer_network(registry, node.peers)
    sync, signing, keystore = node.sync, node.signing, node.keystore

    def lag() -> int:
        missing = [p.get("missing") for p in sync.status().get("peers", {}).values()]
        return max([m for m in missing if isinstance(m, int)], default=0)

    watch_sync_lag(registry, lag)
    registry.counter_callback("frostnode_signatures_issued_total", "Signing sessions that produced a signature.",
                              lambda: signing.signatures)
    registry.counter_callback("frostnode_signatures_failed_total", "Signing sessions that ended without a signature.",
                              lambda: signing.failures)

    def epoch() -> int:
        newest = keystore.newest_usable()
        return 0 if newest is None else newest.epoch

    registry.gauge_callback("frostnode_epoch", "Epoch of the newest usable federation key (0: none yet).", epoch)
    dkg = node.dkg
    registry.counter_callback("frostnode_dkg_runs_total", "Distributed key generations this node started or joined.",
                              lambda: dkg.runs_started)
    registry.counter_callback("frostnode_dkg_failures_total", "Distributed key generations that ended without a key.",
                              lambda: dkg.runs_failed)
    latency = registry.histogram("frostnode_broadcast_latency_seconds",
                                 "Seconds from the start of one of our reliable broadcasts to its delivery here.")
    node.broadcast.observe_latency(latency.observe)


class _TwistdRoot(MultiService):
    """
    The service handed to twistd.  When attached to twistd's application it
    sets the application's log observer (which twistd uses unless given
    C{--logger}), so C{[log]} chooses format and level while twistd's
    C{--logfile}/C{-n} still choose where lines go.
    """

    def __init__(self, node: Node, server_options: Optional[Any]) -> None:
        super().__init__()
        self.setName("frostnode")
        self._server_options = server_options
        node.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized) and self._server_options is not None:
            out = node_logging.twistd_log_file(self._server_options)
            if out is not None and parent.getComponent(ILogObserver, None) is None:
                parent.setComponent(ILogObserver, node_logging.make_observer(self.node.config.log, out))
        super().setServiceParent(parent)

    @property
    def node(self) -> Node:
        return self.getServiceNamed("node")


def makeService(options: Options) -> MultiService:
    """twistd's entry point: the node built from the options' checked config."""
    from twisted.internet import reactor

    try:
        node = build_node(options.node_config, options.node_keys, reactor, options.node_schemes)
    except ConfigError as e:
        raise SystemExit(f"frostnode: {e}") from None
    return _TwistdRoot(node, getattr(options, "parent", None))
