# -*- test-case-name: tests.test_signing_signer -*-
"""
The signer's side of a session, without I/O: decide, from the member's
I{own} view, whether to sign what a coordinator proposes.

A coordinator proposes (scheme, request bytes, the SHA-256 digest of the
message I{it} computed, signer set, nonces).  The signer never signs the
coordinator's bytes: it runs the scheme on its own local view, computes the
message itself, and

 - if its digest differs from the proposal, refuses with C{views-differ},
   carrying its own digest (so the coordinator and the client can see who
   agrees with whom);
 - if the scheme rejects the request, refuses with
   C{validation-failed: <reason>};
 - otherwise builds the session (every check that can fail on the request
   runs here, I{before} a nonce is touched, so a malformed request never
   burns one) and returns L{Ready}.  The driver then reserves the nonce in
   the store (spent mark fsync'd before the scalars come back) and only
   then calls L{Ready.sign}; the share leaves the node after that.
 - A request this member cannot serve at all (unknown epoch or scheme, a
   nonce not issued to that coordinator, a signer set that is not a valid
   set) is refused with C{unavailable}: not a disagreement about data.
 - A member named in no signer entry only validates (audit mode) and
   answers with a signed agreement or refusal.

Refusals and agreements are L{Verdict}s signed with the member's host key
over L{verdict_message}, which binds the coordinator, the request's content
and proposal, the session, the verdict and the member's digest: a client
shown a verdict can check who said it, about what.

A request naming another key for the epoch than the member's current one
(two certified DKG sessions of one epoch while members converge) is
refused with C{key-mismatch} first, before anything else is looked at: the
member is not serving that key, which is neither a disagreement about data
nor misbehaviour.

Validation results are cached.  Schemes are deterministic functions of the
request and the view (and get no clock), so when the view can say what
state it is in (C{digest()}, as L{frostnode.validation.interface.LogView}
does: the set of held records) results are cached under (scheme, request,
key, view state), across coordinators and request ids: a member asked
again and again for the same thing, with fresh ids, evaluates it once, and
evaluates again as soon as its log changes (a client retrying after this
member caught up).  A view without C{digest()} gets a cache per
(coordinator, request id), so only the further sessions ROAST may start
for one request reuse a result.  A missing-data result is never cached.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Optional, Protocol, Union

from frostnode.crypto.errors import InvalidContributionError
from frostnode.crypto.nonces import SecretNonce
from frostnode.identity import HostKeypair, verify_host_signature
from frostnode.signing.messages import (
    AGREE,
    KEY_MISMATCH,
    UNAVAILABLE,
    VALIDATION_FAILED,
    VIEWS_DIFFER,
    SignerEntry,
    SignRequest,
    SignShare,
    Verdict,
    message_digest,
    truncate_reason,
    verdict_message,
)
from frostnode.signing.pool import coordinator_of
from frostnode.signing.suites import EpochKey, Session, SigningShare, get_suite
from frostnode.validation.interface import MissingData, Rejection


class Scheme(Protocol):
    """
    What signing needs of a validation scheme (as the registry's
    C{LoadedScheme} provides): the exact message bytes to sign for a
    request on a view, or L{Rejection} / L{MissingData}.
    """

    name: str

    def message(self, request: bytes, view: Any) -> bytes: ...


class Ready(NamedTuple):
    """
    Everything checked; sign once the nonce is reserved.

    @ivar entry: our signer entry; reserve C{entry.nonce_id}.
    """

    request: SignRequest
    entry: SignerEntry
    message: bytes
    session: Session
    signing: SigningShare

    def sign(self, nonce: SecretNonce) -> SignShare:
        """
        The share, from the nonce the store released (consumed here).

        @raise ValueError: the nonce's commitment is not the one the session
            names (the store and the request disagree); nothing is sent.
        """
        if nonce.commitment != self.entry.commitment:
            raise ValueError("reserved nonce does not match the commitment in the request")
        share = self.session.sign(self.signing, nonce)
        return SignShare(self.request.request_id, self.request.session, share)


class Answer(NamedTuple):
    """A signed verdict to send back (refusal, or agreement in audit mode)."""

    verdict: Verdict


class NeedData(NamedTuple):
    """The scheme lacks data the request names; try catch-up, then ask again."""

    error: MissingData


Outcome = Union[Ready, Answer, NeedData]


class Evaluation(NamedTuple):
    """A scheme's result on this member's view: the message, or why it rejected the request."""

    message: Optional[bytes]
    rejection: str = ""


def view_state(view: Any) -> Optional[Hashable]:
    """
    What a scheme's result on C{view} depends on besides the request: the
    log digest of a L{frostnode.validation.interface.LogView}; None for a
    view that cannot say (no caching across requests then).
    """
    digest = getattr(view, "digest", None)
    return digest() if callable(digest) else None


class Signer:
    """
    One member's signing decisions.

    @param host: this member's host keypair (signs verdicts).
    @param schemes: scheme name -> scheme (anything with C{.get(name)}).
    @param cache_size: validation results remembered.
    @param state: the state of a view that scheme results depend on
        (L{view_state}).
    """

    def __init__(self, host: HostKeypair, schemes: Mapping[str, Scheme], cache_size: int = 1024,
                 state: Callable[[Any], Optional[Hashable]] = view_state) -> None:
        self.host = host
        self.host_key = host.public
        self.schemes = schemes
        self.state = state
        self._cache: OrderedDict[tuple, Evaluation] = OrderedDict()
        self._cache_size = cache_size

    def verdict(self, coordinator: bytes, req: SignRequest, kind: int, digest: bytes, reason: str,
                commitment: Optional[bytes] = None) -> Answer:
        """Our signed verdict on C{req}."""
        reason = truncate_reason(reason)
        if commitment is None:
            commitment = req.request_commitment()
        sig = self.host.sign(verdict_message(coordinator, commitment, req.request_id, req.session,
                                             kind, digest, reason))
        return Answer(Verdict(req.request_id, req.session, kind, digest, reason, sig))

    def evaluate(self, scheme: str, request: bytes, key: bytes, view: Any, coordinator: bytes,
                 request_id: bytes) -> Evaluation:
        """
        What C{scheme} makes of C{request} on C{view}, for a request under
        C{key} (an epoch's output key: checkpoints depend on its members),
        from the cache when it can be.

        @raise LookupError: unknown scheme.
        @raise MissingData: the view lacks data the request names.
        """
        state = self.state(view)
        cache_key: tuple = (("view", state) if state is not None else ("request", coordinator, request_id),
                            scheme, request, key)
        hit = self._cache.get(cache_key)
        if hit is not None:
            self._cache.move_to_end(cache_key)
            return hit
        loaded = self.schemes.get(scheme)
        if loaded is None:
            raise LookupError(scheme)
        try:
            result = Evaluation(bytes(loaded.message(request, view)))
        except Rejection as e:
            result = Evaluation(None, str(e))
        self._cache[cache_key] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    def handle(self, coordinator: bytes, req: SignRequest, signing: Optional[SigningShare], view: Any,
               commitment: Optional[bytes] = None) -> Outcome:
        """
        Decide on one session request from C{coordinator}.

        @param signing: our share for C{req.epoch}, or None if we hold no
            usable key for that epoch.
        @param view: our local data, passed to the scheme as is.
        @param commitment: C{req.request_commitment()} if already computed.
        """
        if commitment is None:
            commitment = req.request_commitment()

        def answer(kind: int, digest: bytes, reason: str) -> Answer:
            return self.verdict(coordinator, req, kind, digest, reason, commitment)

        if signing is None:
            return answer(UNAVAILABLE, b"", f"no usable key for epoch {req.epoch}")
        key = signing.key
        if key.output_key != req.key:
            return answer(KEY_MISMATCH, b"", f"epoch {req.epoch} is key {key.output_key.hex()[:16]} here, "
                                             f"not {req.key.hex()[:16]}")
        entry = req.entry_for(signing.index)
        if req.signers:
            problem = _check_signers(key, req, entry, coordinator)
            if problem:
                return answer(UNAVAILABLE, b"", problem)
        try:
            result = self.evaluate(req.scheme, req.request, req.key, view, coordinator, req.request_id)
        except LookupError:
            return answer(UNAVAILABLE, b"", f"unknown scheme {req.scheme!r}")
        except MissingData as e:
            return NeedData(e)
        if result.message is None:
            return answer(VALIDATION_FAILED, b"", result.rejection)
        message = result.message
        digest = message_digest(message)
        if digest != req.digest:
            return answer(VIEWS_DIFFER, digest, "my view gives a different message")
        if entry is None:
            return answer(AGREE, digest, "")
        try:
            session = get_suite(req.suite).signer_session(
                key, [(e.index, e.commitment) for e in req.signers], req.aggnonce, message)
        except (ValueError, InvalidContributionError) as e:
            # InvalidEncoding and the suites' precondition errors are ValueErrors.
            return answer(UNAVAILABLE, b"", f"unusable session: {e}")
        return Ready(req, entry, message, session, signing)

    def handle_missing(self, coordinator: bytes, req: SignRequest, error: MissingData,
                       commitment: Optional[bytes] = None) -> Answer:
        """Catch-up did not bring the data in time: we cannot agree, and say what we lack."""
        return self.verdict(coordinator, req, VIEWS_DIFFER, b"", f"missing data: {error}", commitment)


def _check_signers(key: EpochKey, req: SignRequest, entry: Optional[SignerEntry], coordinator: bytes) -> str:
    """Why this signer set cannot be served, or the empty string."""
    if not key.threshold <= len(req.signers) <= key.n:
        return f"{len(req.signers)} signers where {key.threshold}..{key.n} are needed"
    if req.signers[-1].index >= key.n:
        return f"signer index {req.signers[-1].index} out of range"
    if entry is None:
        return ""
    if coordinator_of(entry.nonce_id) != coordinator:
        return "nonce was not issued to this coordinator"
    return ""


def verify_verdict(member: bytes, coordinator: bytes, request_commitment: bytes, verdict: Verdict) -> bool:
    """
    Did C{member} sign C{verdict} about the request whose
    L{SignRequest.request_commitment} is C{request_commitment}, sent by
    C{coordinator}?
    """
    msg = verdict_message(coordinator, request_commitment, verdict.request_id, verdict.session,
                          verdict.kind, verdict.digest, verdict.reason)
    return verify_host_signature(member, msg, verdict.signature)

