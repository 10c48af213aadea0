"""Verifying m2a's signed intents, offline: the small library an executor (m2a's own, or a third
party's ERP adapter) checks an intent with before it acts, from m2a's JWKS alone.

It owns the intent's claims (``Intent``, parsed strictly: an unknown claim is refused), the digest of
a call's arguments (``args_digest``: sha256 of their RFC 8785 canonical JSON), ``verify_intent`` (sync;
``averify_intent`` for asyncio code) and ``JwksSource`` (m2a's JWKS over HTTP or from a file, cached,
re-read once when a rotated-in key appears, fail-closed). Single use lives in ``replay.py``.

It imports only PyJWT, cryptography, rfc8785, httpx and pydantic: no store, no gateway, no m2a
config, so ``from m2a.trust.verify import verify_intent, JwksSource`` is cheap anywhere.

The rules, each refusal an ``IntentError`` with a ``code``:

- the token is a compact JWS whose header says ``alg`` ES256 (never ``none``, HS* or RS*: the
  algorithm-confusion attacks), ``typ`` ``m2a-intent+jwt`` and a ``kid`` the JWKS has (a P-256 key);
- the signature verifies with that key; the claims parse strictly;
- it lives at most 60 s (``exp - iat``), is not expired and was not issued in the future (both with
  ``leeway_s``), its ``aud`` is exactly this executor, its ``iss`` m2a's where given;
- where the caller passes the arguments it is about to act on, their digest is ``args_sha256``.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from jwt.utils import base64url_decode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

TYP = "m2a-intent+jwt"
MAX_TTL_S = 60
ALG = "ES256"
MAX_TOKEN_BYTES = 16_384
MAX_LEEWAY_S = 60  # replay caches keep a used jti longer than this past its expiry
REFETCH_EVERY_S = 10.0  # an unknown kid re-reads the JWKS at most this often

CODES = frozenset(
    {
        "malformed",
        "bad_signature",
        "unknown_key",
        "wrong_type",
        "wrong_issuer",
        "wrong_audience",
        "expired",
        "not_yet_valid",
        "too_long_lived",
        "args_mismatch",
        "replayed",
    }
)


class IntentError(Exception):
    """An intent refused: ``code`` (one of ``CODES``) says why, ``message`` says it to a person."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown intent error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# -- the claims ----------------------------------------------------------------------------------

Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(min_length=1, max_length=512)]


class _Claim(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AgentClaim(_Claim):
    """The agent that asked, as m2a's registry knows it."""

    id: int
    name: Name
    team: Name
    version: int | None
    version_id: int | None


class Act(_Claim):
    """One link of the on-behalf-of chain (RFC 8693 ``act``): whom the agent acts for, and whom that
    one acted for in turn (``act``, nested)."""

    sub: Name
    act: Act | None = None

    def chain(self) -> list[str]:
        """The subjects, nearest first."""
        out, link = [], self
        while link is not None:
            out.append(link.sub)
            link = link.act
        return out


class ToolClaim(_Claim):
    server: Name
    name: Name


class PolicyClaim(_Claim):
    """The policy that allowed the action (its id and version) and the mode it ran in."""

    id: Name
    version: Name
    mode: Literal["enforce", "log_only"]


class GuardrailClaim(_Claim):
    detector: Name
    action: Name


class Intent(_Claim):
    """The claims of a signed intent, as they appear in the JWT."""

    iss: Name
    aud: Name  # the one executor meant to act on it, e.g. m2a:executor:mcp
    sub: Name  # the agent's SPIFFE id
    jti: Hex32  # the nonce: used once
    iat: int
    exp: int
    agent: AgentClaim
    act: Act | None  # whom the agent acts for, or None when it acts for its team alone
    tool: ToolClaim
    args_sha256: Hex64
    tier: Literal["read", "write", "destructive"]
    policy: PolicyClaim
    guardrails: list[GuardrailClaim]
    approval: Name | None  # the person's approval (required for destructive actions)
    trace_id: Hex32 | None

    @field_serializer("act")
    def _act_json(self, act: Act | None) -> dict[str, Any] | None:
        return None if act is None else act.model_dump(exclude_none=True)  # RFC 8693: no "act": null

    def claims(self) -> dict[str, Any]:
        """The JSON object that is signed."""
        return self.model_dump(mode="json")


def args_digest(arguments: Any) -> str:
    """sha256 (hex) of the RFC 8785 canonical JSON of a call's arguments (None counts as ``{}``).

    ``ValueError`` for what JCS cannot canonicalize: integers beyond 2**53, NaN or infinities,
    non-JSON types, keys that are not strings.
    """
    try:
        return hashlib.sha256(rfc8785.dumps({} if arguments is None else arguments)).hexdigest()
    except (rfc8785.CanonicalizationError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise ValueError(f"the arguments are not JSON that RFC 8785 can canonicalize: {exc}") from exc


# -- the keys ------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _ec_key(x: str, y: str) -> ec.EllipticCurvePublicKey:
    def num(v: str) -> int:
        raw = base64url_decode(v.encode("ascii"))
        if len(raw) != 32:
            raise ValueError("a P-256 coordinate is 32 bytes")
        return int.from_bytes(raw, "big")

    return ec.EllipticCurvePublicNumbers(num(x), num(y), ec.SECP256R1()).public_key()


def _key_in(jwks: Any, kid: str) -> dict[str, Any] | None:
    """The JWK named ``kid`` in a JWKS document, or None (also for a document that is no JWKS)."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        return None
    found = [k for k in keys if isinstance(k, dict) and k.get("kid") == kid]
    return found[0] if len(found) == 1 else None  # two keys with one kid: neither is trusted


def _public_key(jwk: dict[str, Any], kid: str) -> ec.EllipticCurvePublicKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise IntentError("unknown_key", f"key {kid!r} is not a P-256 (ES256) key")
    if jwk.get("alg", ALG) != ALG or jwk.get("use", "sig") != "sig":
        raise IntentError("unknown_key", f"key {kid!r} is not published for ES256 signatures")
    x, y = jwk.get("x"), jwk.get("y")
    if not isinstance(x, str) or not isinstance(y, str):
        raise IntentError("unknown_key", f"key {kid!r} has no x and y")
    try:
        return _ec_key(x, y)
    except (ValueError, TypeError) as exc:
        raise IntentError("unknown_key", f"key {kid!r} is not a valid P-256 public key") from exc


class JwksSource:
    """m2a's JWKS, fetched over HTTP (or read from a file), cached ``ttl_s``.

    A ``kid`` not in the cached copy re-reads it once (a key rotated in since), at most every
    ``REFETCH_EVERY_S`` seconds whatever the kids asked for, so forged kids cannot make it hammer
    the server. It fails closed: a JWKS that cannot be read (and no fresh cached copy) knows no key.
    Thread-safe; ``get`` blocks while it fetches (``averify_intent`` fetches in a worker thread).
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 300,
        timeout_s: float = 5,
        refetch_every_s: float = REFETCH_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.refetch_every_s = refetch_every_s
        self.clock = clock
        self.fetches = 0  # reads attempted (for tests and metrics)
        self._path: Path | None = None
        self._doc: dict[str, Any] | None = None
        self._fetched_at = float("-inf")  # the last good read
        self._tried_at = float("-inf")  # the last attempt, good or not
        self._error: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path, *, ttl_s: float = 300) -> JwksSource:
        """A JWKS read from a JSON file (re-read like a URL: after ``ttl_s``, or for an unknown kid)."""
        src = cls(Path(path).resolve().as_uri(), ttl_s=ttl_s)
        src._path = Path(path)
        return src

    def _read(self) -> dict[str, Any]:
        if self._path is not None:
            doc = json.loads(self._path.read_text())
        else:
            resp = httpx.get(self.url, timeout=self.timeout_s, follow_redirects=False)
            resp.raise_for_status()
            doc = resp.json()
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("it is not a JWKS (an object with a 'keys' list)")
        return doc

    def _fetch(self) -> None:
        """Under the lock: one read attempt; a failure keeps the last good copy (until its ttl)."""
        self._tried_at = self.clock()
        self.fetches += 1
        try:
            self._doc = self._read()
        except (httpx.HTTPError, OSError, ValueError) as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            return
        self._fetched_at, self._error = self._tried_at, None

    def _fresh(self) -> bool:
        return self._doc is not None and self.clock() - self._fetched_at < self.ttl_s

    def would_fetch(self, kid: str) -> bool:
        """Whether ``get(kid)`` would read the JWKS first (so async callers can do it off the loop)."""
        with self._lock:
            return self._due(kid)

    def _due(self, kid: str) -> bool:
        """Whether to read now: the copy is stale, or lacks ``kid``; either way at most once per
        ``refetch_every_s`` (an unreachable JWKS is not asked again on every intent)."""
        if self.clock() - self._tried_at < self.refetch_every_s:
            return False
        return not self._fresh() or _key_in(self._doc, kid) is None

    def get(self, kid: str) -> dict[str, Any] | None:
        """The JWK named ``kid``; None when the JWKS (read where due) has no such key.

        ``IntentError("unknown_key")`` when the JWKS cannot be read and no fresh copy is cached.
        """
        with self._lock:
            if self._due(kid):
                self._fetch()  # stale, or maybe a key rotated in since the last read
            if not self._fresh():
                raise IntentError("unknown_key", f"m2a's JWKS at {self.url} cannot be read ({self._error})")
            return _key_in(self._doc, kid)


# -- verifying -----------------------------------------------------------------------------------

NOT_GIVEN: Any = object()
# PyJWT's ES256 (raw r||s signatures, as JWS has them). The compact form is split here, its
# alphabet checked by one regex: PyJWT's own decode would parse the header twice and check each
# segment's characters one by one in Python (twice the cost of the signature itself).
_ES256 = ECAlgorithm(ECAlgorithm.SHA256)
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")  # empty signature: alg none


def _segment(part: str, what: str) -> bytes:
    """One base64url segment (the alphabet already checked), decoded; malformed if it is not."""
    try:
        return base64url_decode(part.encode("ascii"))
    except (ValueError, binascii.Error) as exc:
        raise IntentError("malformed", f"the intent's {what} is not base64url") from exc


def _header(token: Any) -> dict[str, Any]:
    if not isinstance(token, str) or not token:
        raise IntentError("malformed", "an intent is a compact JWS string")
    if len(token) > MAX_TOKEN_BYTES or not token.isascii():
        raise IntentError("malformed", "the intent is too long or not ASCII")
    if _COMPACT.fullmatch(token) is None:
        raise IntentError("malformed", "an intent is a compact JWS: three base64url parts")
    try:
        header = json.loads(_segment(token.partition(".")[0], "header"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise IntentError("malformed", "the intent's header is not JSON") from exc
    if not isinstance(header, dict):
        raise IntentError("malformed", "the intent's header is not a JSON object")
    return header


def _key_for(header: dict[str, Any], jwks: dict[str, Any] | JwksSource) -> ec.EllipticCurvePublicKey:
    alg = header.get("alg")
    if alg != ALG:
        raise IntentError("bad_signature", f"intents are signed with ES256 only, not {alg!r}")
    if header.get("typ") != TYP:
        raise IntentError("wrong_type", f"the token's typ is {header.get('typ')!r}, not {TYP!r}")
    if "crit" in header:
        raise IntentError("malformed", "the intent's header has critical extensions m2a does not use")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise IntentError("unknown_key", "the intent's header names no key (kid)")
    jwk = jwks.get(kid) if isinstance(jwks, JwksSource) else _key_in(jwks, kid)
    if jwk is None:
        raise IntentError("unknown_key", f"key {kid!r} is not in m2a's JWKS")
    return _public_key(jwk, kid)


def verify_intent(
    token: str,
    jwks: dict[str, Any] | JwksSource,
    *,
    audience: str,
    issuer: str | None = None,
    arguments: Any = NOT_GIVEN,
    now: float | None = None,
    leeway_s: int = 5,
) -> Intent:
    """The intent's claims, once every rule holds (see the module docstring); else ``IntentError``.

    ``jwks``: a JWKS document (``{"keys": [...]}``) or a ``JwksSource``. ``arguments``: what the
    executor is about to act on (checked against ``args_sha256``; omit it only where the caller
    checks the digest itself). It does not consume the intent: use ``replay.admit`` for that.
    """
    if not 0 <= leeway_s <= MAX_LEEWAY_S:
        raise ValueError(f"leeway_s must be within 0..{MAX_LEEWAY_S}")
    header = _header(token)
    key = _key_for(header, jwks)
    signing_input, _, signature = token.rpartition(".")
    if not _ES256.verify(signing_input.encode("ascii"), key, _segment(signature, "signature")):
        raise IntentError("bad_signature", "the intent's signature does not verify")
    payload = _segment(signing_input.partition(".")[2], "payload")
    try:
        intent = Intent.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "claims"
        raise IntentError("malformed", f"the intent's claims are not valid: {where}: {first['msg']}") from exc

    t = time.time() if now is None else now
    if intent.exp <= intent.iat:
        raise IntentError("malformed", "the intent expires before it was issued")
    if intent.exp - intent.iat > MAX_TTL_S:
        raise IntentError(
            "too_long_lived", f"an intent lives at most {MAX_TTL_S} s, this one {intent.exp - intent.iat} s"
        )
    if t >= intent.exp + leeway_s:
        raise IntentError("expired", f"the intent expired {int(t - intent.exp)} s ago")
    if intent.iat > t + leeway_s:
        raise IntentError("not_yet_valid", f"the intent is issued {int(intent.iat - t)} s in the future")
    if intent.aud != audience:
        raise IntentError("wrong_audience", f"the intent is meant for {intent.aud!r}, not {audience!r}")
    if issuer is not None and intent.iss != issuer:
        raise IntentError("wrong_issuer", f"the intent was issued by {intent.iss!r}, not {issuer!r}")
    if arguments is not NOT_GIVEN:
        try:
            digest = args_digest(arguments)
        except ValueError as exc:
            raise IntentError("args_mismatch", str(exc)) from exc
        if not hmac.compare_digest(digest, intent.args_sha256):
            raise IntentError("args_mismatch", "the arguments are not the ones the intent was signed for")
    return intent


async def averify_intent(
    token: str,
    jwks: dict[str, Any] | JwksSource,
    *,
    audience: str,
    issuer: str | None = None,
    arguments: Any = NOT_GIVEN,
    now: float | None = None,
    leeway_s: int = 5,
) -> Intent:
    """``verify_intent`` for asyncio code: a JWKS read it needs runs in a worker thread."""
    if isinstance(jwks, JwksSource):
        try:
            kid = _header(token).get("kid")
        except IntentError:
            kid = None
        if isinstance(kid, str) and jwks.would_fetch(kid):
            with contextlib.suppress(IntentError):  # verify_intent below says why
                await asyncio.to_thread(jwks.get, kid)
    return verify_intent(
        token, jwks, audience=audience, issuer=issuer, arguments=arguments, now=now, leeway_s=leeway_s
    )
