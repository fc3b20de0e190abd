# -*- test-case-name: tests.test_client_http -*-
"""
The client layer as one service for L{frostnode.tap.build_node}: the Noise
client port (C{[client]}, on unless disabled) and the HTTP API (C{[http]},
off unless enabled), both in front of one L{NodeAPI}.

Wiring, once the sync service exists (C{node.sync}) and the key store is
open (C{node.keystore})::

    node.client = build_client_service(node.config, node.keys.noise.secret, node.sync, reactor,
                                       keystore=node.keystore, directory=node.directory,
                                       links=node.peers)
    node.client.setServiceParent(node)

and the signing service's commands (C{sign}, C{checkpoint}, C{checkpoints},
the HTTP signing routes and the C{signing} status section) with
L{frostnode.signing.commands.register_signing_commands}::

    register_signing_commands(node.client.api, node.signing, node.schemes)
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString

from frostnode.client.api import NodeAPI
from frostnode.client.http import HttpApiService
from frostnode.client.limits import ClientLimits
from frostnode.client.server import ClientPortService


class ClientService(MultiService):
    """
    @ivar api: the command table and operations both doors share.
    @ivar port: the Noise client port, or C{None} when C{[client] enabled} is false.
    @ivar http: the HTTP API, or C{None} unless C{[http] enabled}.
    """

    def __init__(self, api: NodeAPI) -> None:
        super().__init__()
        self.setName("client")
        self.api = api
        self.port: Optional[ClientPortService] = None
        self.http: Optional[HttpApiService] = None


def build_client_service(config: Any, noise_private: bytes, sync: Any, reactor: Any, *, keystore: Any = None,
                         directory: Any = None, links: Any = None, network: str = "mainnet") -> ClientService:
    """
    The client layer of a node from its checked L{frostnode.config.Config}.

    @param noise_private: the node's Noise static secret (its card's key).
    @param sync: the sync service (C{submit}, C{status}, C{log}).
    """
    limits = ClientLimits.from_config(config.client)
    api = NodeAPI(sync, reactor, keystore=keystore, directory=directory, threshold=config.federation.threshold,
                  links=links, network=network, limits=limits)
    service = ClientService(api)
    if config.client.enabled:
        service.port = ClientPortService(api, noise_private, serverFromString(reactor, config.client.listen),
                                         reactor, limits)
        service.port.setServiceParent(service)
    if config.http.enabled:
        service.http = HttpApiService(api, serverFromString(reactor, config.http.listen), reactor, limits)
        service.http.setServiceParent(service)
    return service
