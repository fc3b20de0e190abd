"""
Tests for L{frostnode.crypto.group}: the strict decoders and the identity
handling that coincurve does not provide on its own.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from frostnode.crypto.errors import InvalidEncoding
from frostnode.crypto.group import (
    INFINITY,
    G,
    N,
    P,
    Point,
    base_mul,
    batch_inverse,
    lift_x,
    multi_mul,
    point_from_bytes,
    point_sum,
    scalar_from_bytes,
    scalar_from_bytes_nonzero,
    scalar_inverse,
    scalar_to_bytes,
)

#: SEC1 compressed encoding of the generator (SEC 2, section 2.4.1).
G_ENC = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
#: x = 5 and x = 0 are not x coordinates of curve points (x^3 + 7 is a non-residue).
X_NOT_ON_CURVE = (5).to_bytes(32, "big")


class PointDecodingTests(SynchronousTestCase):
    def test_generator_round_trip(self) -> None:
        self.assertEqual(G.encode(), G_ENC)
        self.assertEqual(point_from_bytes(G_ENC), G)
        self.assertEqual(point_from_bytes(G_ENC).encode(), G_ENC)

    def test_wrong_length_rejected(self) -> None:
        for data in (b"", G_ENC[:32], G_ENC + b"\x00", G_ENC[1:]):
            self.assertRaises(InvalidEncoding, point_from_bytes, data)

    def test_uncompressed_and_hybrid_rejected(self) -> None:
        """coincurve would parse these; the wire format admits only compressed points."""
        uncompressed = G.to_coincurve().format(compressed=False)
        self.assertRaises(InvalidEncoding, point_from_bytes, uncompressed)
        self.assertRaises(InvalidEncoding, point_from_bytes, b"\x06" + uncompressed[1:])

    def test_bad_prefix_rejected(self) -> None:
        for prefix in (0x00, 0x01, 0x04, 0x05, 0x06, 0x07, 0xFF):
            self.assertRaises(InvalidEncoding, point_from_bytes, bytes((prefix,)) + G_ENC[1:])

    def test_x_not_below_field_size_rejected(self) -> None:
        """x = p + 1 would alias x = 1, which is on the curve, if it were reduced."""
        for x in (P, P + 1, 2**256 - 1):
            for prefix in (b"\x02", b"\x03"):
                self.assertRaises(InvalidEncoding, point_from_bytes, prefix + x.to_bytes(32, "big"))
        self.assertEqual(len(point_from_bytes(b"\x02" + (1).to_bytes(32, "big")).encode()), 33)

    def test_not_on_curve_rejected(self) -> None:
        for x in (X_NOT_ON_CURVE, bytes(32)):
            self.assertRaises(InvalidEncoding, point_from_bytes, b"\x02" + x)
            self.assertRaises(InvalidEncoding, point_from_bytes, b"\x03" + x)

    def test_identity_has_no_encoding(self) -> None:
        self.assertRaises(InvalidEncoding, point_from_bytes, bytes(33))
        self.assertRaises(InvalidEncoding, point_from_bytes, b"\x02" + bytes(32))
        self.assertRaises(ValueError, INFINITY.encode)
        self.assertRaises(ValueError, INFINITY.xbytes)
        self.assertRaises(ValueError, INFINITY.has_even_y)
        self.assertRaises(ValueError, INFINITY.to_coincurve)

    def test_invalid_encoding_is_a_value_error(self) -> None:
        """Callers that catch ValueError for untrusted bytes also catch decoding failures."""
        self.assertTrue(issubclass(InvalidEncoding, ValueError))

    def test_lift_x(self) -> None:
        p = lift_x(G_ENC[1:])
        self.assertEqual(p, G)
        self.assertTrue(p.has_even_y())
        odd = base_mul(3) if not base_mul(3).has_even_y() else -base_mul(3)
        self.assertEqual(lift_x(odd.xbytes()), -odd)
        self.assertRaises(InvalidEncoding, lift_x, X_NOT_ON_CURVE)
        self.assertRaises(InvalidEncoding, lift_x, P.to_bytes(32, "big"))
        self.assertRaises(InvalidEncoding, lift_x, G_ENC)


class PointArithmeticTests(SynchronousTestCase):
    def test_negation_flips_parity_only(self) -> None:
        p = base_mul(7)
        q = -p
        self.assertEqual(q.xbytes(), p.xbytes())
        self.assertNotEqual(q.has_even_y(), p.has_even_y())
        self.assertEqual(q, p * (N - 1))
        self.assertEqual(-q, p)
        self.assertIs(-INFINITY, INFINITY)

    def test_identity_arithmetic(self) -> None:
        p = base_mul(11)
        self.assertTrue((p - p).is_infinity)
        self.assertTrue((p + (-p)).is_infinity)
        self.assertEqual(p + INFINITY, p)
        self.assertEqual(INFINITY + p, p)
        self.assertTrue((INFINITY + INFINITY).is_infinity)
        self.assertTrue((p * 0).is_infinity)
        self.assertTrue((p * N).is_infinity)
        self.assertTrue((INFINITY * 5).is_infinity)
        self.assertTrue(base_mul(0).is_infinity)
        self.assertTrue(base_mul(N).is_infinity)
        self.assertEqual(base_mul(N + 1), G)
        self.assertEqual(INFINITY, Point(None))
        self.assertNotEqual(INFINITY, G)
        self.assertNotEqual(G, INFINITY)
        self.assertEqual(len({INFINITY, Point(None), G, point_from_bytes(G_ENC)}), 2)

    def test_scalar_multiplication_agrees_with_base_mul(self) -> None:
        k = 0xC0FFEE * 2**200 + 12345
        self.assertEqual(G * k, base_mul(k))
        self.assertEqual(k * G, base_mul(k))
        self.assertEqual(G * -1, -G)
        self.assertEqual(base_mul(5) * 3, base_mul(15))

    def test_point_sum(self) -> None:
        pts = [base_mul(i) for i in (1, 2, 3)]
        self.assertEqual(point_sum(pts), base_mul(6))
        self.assertEqual(point_sum(pts + [INFINITY]), base_mul(6))
        self.assertTrue(point_sum([]).is_infinity)
        self.assertTrue(point_sum([INFINITY, INFINITY]).is_infinity)
        self.assertEqual(point_sum([INFINITY, G]), G)
        self.assertEqual(point_sum([G, -G, G]), G, "a partial sum at infinity is not the result")
        self.assertTrue(point_sum([base_mul(1), base_mul(2), base_mul(N - 3)]).is_infinity)
        self.assertEqual(multi_mul([(2, G), (3, base_mul(5)), (0, G)]), base_mul(17))

    def test_has_even_y(self) -> None:
        self.assertTrue(G.has_even_y())
        self.assertFalse((-G).has_even_y())


class ScalarTests(SynchronousTestCase):
    def test_scalar_range(self) -> None:
        self.assertEqual(scalar_from_bytes(bytes(32)), 0)
        self.assertEqual(scalar_from_bytes((N - 1).to_bytes(32, "big")), N - 1)
        for k in (N, N + 1, 2**256 - 1):
            self.assertRaises(InvalidEncoding, scalar_from_bytes, k.to_bytes(32, "big"))
        self.assertRaises(InvalidEncoding, scalar_from_bytes, bytes(31))
        self.assertRaises(InvalidEncoding, scalar_from_bytes, bytes(33))
        self.assertRaises(InvalidEncoding, scalar_from_bytes_nonzero, bytes(32))
        self.assertEqual(scalar_from_bytes_nonzero((1).to_bytes(32, "big")), 1)

    def test_scalar_to_bytes_reduces(self) -> None:
        self.assertEqual(scalar_to_bytes(N + 5), (5).to_bytes(32, "big"))
        self.assertEqual(scalar_to_bytes(-1), (N - 1).to_bytes(32, "big"))

    def test_inverses(self) -> None:
        values = [1, 2, 3, N - 1, 0xDEADBEEF, 2**255]
        self.assertEqual(batch_inverse(values), [scalar_inverse(v) for v in values])
        for v, inv in zip(values, batch_inverse(values)):
            self.assertEqual(v * inv % N, 1)
        self.assertEqual(batch_inverse([]), [])
        self.assertRaises(ZeroDivisionError, scalar_inverse, N)
        self.assertRaises(ZeroDivisionError, batch_inverse, [1, 0, 2])
