"""
Distributed key generation over the federation: FROST KeyGen (Pedersen DKG
with proofs of knowledge) plus an agreement round, complaints, restarts,
persistence and scheduling.

Modules, bottom up:

  - L{frostnode.dkg.transcript}: session parameters and ids, the agreement
    hash every member signs, the success certificate.
  - L{frostnode.dkg.messages}: the wire formats (broadcast tags and
    payloads, point-to-point messages).
  - L{frostnode.dkg.session}: one session as a pure state machine (round 1,
    shares, complaints and reveals, agreement).
  - L{frostnode.dkg.run}: one epoch's run, a pure state machine over
    sessions: exclusions, restarts, recovery after a crash.
  - L{frostnode.dkg.scheduler}: when a DKG may run (interval, minimum
    spacing) and the timer that follows the policy.
  - L{frostnode.dkg.storage}: what is persisted, over the key store.
  - L{frostnode.dkg.driver}: C{DkgService}, the Twisted shell wiring the run
    to links, broadcast, store and clock.
"""
