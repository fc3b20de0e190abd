"""
Locate the public test vectors in C{../shared/vectors} (beside the project
root).  They are kept out of the package; a test that needs them is skipped,
with the path it looked at, if they are absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.trial.unittest import SkipTest

_ROOT = Path(__file__).resolve().parent.parent
VECTORS = Path(os.environ.get("FROSTNODE_VECTORS", _ROOT.parent / "shared" / "vectors"))


def vector_path(rel: str) -> Path:
    p = VECTORS / rel
    if not p.exists():
        raise SkipTest(f"test vectors not found at {p}")
    return p


def load_json(rel: str):
    with open(vector_path(rel)) as f:
        return json.load(f)
