"""
Clients of the federation: the node's Noise client port and HTTP API, and
the client library, its synchronous wrapper and the C{frostnode-client} CLI.

  - L{frostnode.client.api}: L{NodeAPI}, the command table behind both doors.
  - L{frostnode.client.server}: the Noise client port (L{ClientServerFactory}).
  - L{frostnode.client.http}: the JSON-over-HTTP API (docs/openapi.yaml).
  - L{frostnode.client.library}: L{FrostnodeClient}, Deferred-based.
  - L{frostnode.client.blocking}: L{BlockingClient}, for scripts.
  - L{frostnode.client.cli}: C{frostnode-client}.
  - L{frostnode.client.service}: the layer as one service for the node.

Pure pieces: L{frostnode.client.messages} (frames and command codecs),
L{frostnode.client.handshake} (Noise XX with the client prologue),
L{frostnode.client.limits} (token buckets, in-flight counts),
L{frostnode.client.errors} (the typed errors).  docs/client.rst is the guide.
"""
