"""
Threshold signing: members validate on their own view, then sign; ROAST
makes it finish despite slow, silent or misbehaving members.

Pure cores (no reactor, no sockets, no LMDB):

- L{frostnode.signing.suites}: BIP 445 (default, BIP340 under the Taproot
  output key) and RFC 9591 behind one session interface; L{EpochKey}.
- L{frostnode.signing.messages}: the strict wire messages on C{CHANNEL_SIGN}.
- L{frostnode.signing.pool}: nonce preprocessing policy (per-(signer,
  coordinator) pools, point-to-point).
- L{frostnode.signing.signer}: a member's decision on a session request.
- L{frostnode.signing.roast}: the ROAST coordinator state machine.
- L{frostnode.signing.checkpoint}: the federation's own checkpoint scheme.

The Twisted driver is L{frostnode.signing.service.SigningService}; failures
are L{frostnode.signing.errors.SigningFailed}.  What clients may ask of it
(C{sign}, C{checkpoint}, C{checkpoints}, the C{signing} status section),
with the codecs the client library shares, is
L{frostnode.signing.commands}; docs/signing.rst is the guide.
"""
