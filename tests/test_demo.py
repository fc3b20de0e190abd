"""The newcomer's demonstration must really sign, and say so."""

import io
import re

from coincurve import PublicKeyXOnly
from twisted.trial.unittest import SynchronousTestCase

from frostnode.cli import main
from frostnode.demo import run_demo


class DemoTests(SynchronousTestCase):
    def test_printed_signature_verifies_under_printed_output_key(self):
        out = io.StringIO()
        self.assertTrue(run_demo(4, 3, b"checked by the test", out))
        text = out.getvalue()
        key = bytes.fromhex(re.search(r"Taproot output key:\s+([0-9a-f]{64})", text).group(1))
        sig = bytes.fromhex(re.search(r"^  ([0-9a-f]{128})$", text, re.M).group(1))
        self.assertTrue(PublicKeyXOnly(key).verify(sig, b"checked by the test"))
        self.assertFalse(PublicKeyXOnly(key).verify(sig, b"another message"))

    def test_cli_rejects_threshold_above_members(self):
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["demo", "--members", "3", "--threshold", "4"], out, err), 2)
        self.assertIn("threshold", err.getvalue())
