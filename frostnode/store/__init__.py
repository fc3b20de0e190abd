"""
The state layer: one LMDB environment per node (L{frostnode.store.db}) holding
DKG epochs and sessions (L{frostnode.store.keys}), the preprocessed nonce pool
(L{frostnode.store.nonces}) and the replicated data log
(L{frostnode.store.log}).

The store sits below the protocols: it keeps bytes and simple records, and
imports nothing from C{dkg/}, C{signing/}, C{broadcast/} or the crypto
objects; higher layers encode their own objects.  Its one rule: a write's
Deferred fires only after the data is fsync'd.
"""
