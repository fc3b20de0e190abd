# -*- test-case-name: tests.test_plugin -*-
"""
The twistd plugin's options and wiring: C{twistd -n frostnode --config node.toml}.

Everything that can be wrong with a node's setup (config file, data
directory, key files, membership) is checked in L{Options.postOptions},
before twistd installs a reactor or opens a log, so that a bad setup costs
one line and a non-zero exit instead of a traceback from a half-started
service.  A missing C{--config} is a command-line mistake and raises
C{UsageError}, for which twistd prints its usage text; a bad config file is
not, and twistd's usage text would bury the one line that matters, so it
exits with C{SystemExit("frostnode: <file>: <key> <problem>")} instead.

L{build_node} is the one place where the node's layers are put together: each
later layer (broadcast, DKG, signing, client, sync, Tor, metrics) adds its
service there, as an attribute of L{Node}, so tests can build a node without
twistd and later layers can find each other.  Today it holds the peer links
(L{PeerNetwork}, listening on C{[peer] listen}).

The node logs C{frostnode <host key> running, peer port <port>} once the
reactor runs and the peer port is bound: that line, not service start (which
twistd does before the reactor runs or handles signals), is the one to wait
for.  Shutdown is twistd's: SIGTERM stops the reactor, which first stops
every service of L{Node} and waits for the Deferreds their C{stopService}
return; twistd then re-raises SIGTERM on itself, so the exit status says
the process ended by that signal.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from frostnode import logging as node_logging
from frostnode.config import Config, ConfigError, check_data_dir, load_config
from frostnode.keys import NodeKeys, check_membership, load_node_keys
from frostnode.net.peers import LinkConfig, PeerNetwork


class Options(usage.Options):
    synopsis = "--config node.toml"
    longdesc = ("Run a frostnode federation member. The configuration file is described in "
                "docs/configuration.rst; create one, with the member's keys, with `frostnode init`.")
    optParameters = [
        ["config", "c", None, "The node's TOML configuration file (required)."],
    ]

    #: Set by L{postOptions}: the validated configuration and the node's keys.
    node_config: Config
    node_keys: NodeKeys

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required: the node's TOML file (create one with: frostnode init)")
        try:
            self.node_config, self.node_keys = load_node(self["config"])
        except ConfigError as e:
            raise SystemExit(f"frostnode: {e}") from None


def load_node(path: str) -> tuple[Config, NodeKeys]:
    """
    Everything needed to start a node, checked: the config at C{path}, its
    data directory, both key files, and this node's place among the members.

    @raise ConfigError: naming the file and key at fault.
    """
    config = load_config(path)
    check_data_dir(config)
    keys = load_node_keys(config)
    check_membership(config, keys)
    link_config(config)
    return config, keys


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


class Node(MultiService):
    """
    One federation member's services.  Attributes name the layers' services
    (C{None} until a layer exists or when it is disabled by the config).

    @ivar config: the validated configuration.
    @ivar keys: this node's secret keys.
    @ivar directory: the current members.
    @ivar reactor: the reactor every layer uses (time, network).
    @ivar peers: the member-to-member links, or C{None}.
    """

    log = Logger()

    def __init__(self, config: Config, keys: NodeKeys, reactor: Any) -> None:
        super().__init__()
        self.setName("node")
        self.config = config
        self.keys = keys
        self.reactor = reactor
        self.directory = config.member_directory()
        self.peers: Optional[PeerNetwork] = None

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

    def _running(self) -> None:
        if not self.running:
            return
        if self.peers is None:
            self.log.info("frostnode {host_key} running", host_key=self.host_key)
            return
        self.peers.when_listening().addCallbacks(self._listening, self._not_listening)

    def _listening(self, port: Any) -> None:
        self.log.info("frostnode {host_key} running, peer port {peer_port}", host_key=self.host_key,
                      peer_port=getattr(port.getHost(), "port", str(port.getHost())))

    def _not_listening(self, failure: Any) -> None:
        # The links logged why; the node still dials out, so it carries on.
        self.log.error("frostnode {host_key} running without a peer port ({listen}): {error}",
                       host_key=self.host_key, listen=self.config.peer.listen, error=failure.getErrorMessage())

    def stopService(self) -> Any:
        self.log.info("frostnode {host_key} stopping", host_key=self.host_key)
        d = super().stopService()
        d.addCallback(lambda _: self.log.info("frostnode {host_key} stopped", host_key=self.host_key))
        return d


def build_node(config: Config, keys: NodeKeys, reactor: Any) -> Node:
    """
    Put a node together from its checked configuration and keys.  Layers are
    added here, in dependency order, each as a child service of the node.
    """
    node = Node(config, keys, reactor)
    node.peers = PeerNetwork(reactor, keys.host, keys.noise.secret, node.directory,
                             serverFromString(reactor, config.peer.listen), link_config(config))
    node.peers.setServiceParent(node)
    return node


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

    node = build_node(options.node_config, options.node_keys, reactor)
    return _TwistdRoot(node, getattr(options, "parent", None))
