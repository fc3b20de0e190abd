"""frostnode: a federation of nodes holding one FROST threshold key on secp256k1."""

__version__ = "0.1.0"
