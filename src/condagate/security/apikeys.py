"""API key generation, strength rules and hashing.

Generated keys are ``cg-`` and 40 characters from ``[A-Za-z0-9]`` (about 238 bits): that alphabet
works in every form clients send a key in, conda's ``/t/TOKEN/`` path included (conda matches
``/t/([a-zA-Z0-9-]*)``). Keys are stored as their sha256: a key carries enough entropy that a fast,
unsalted hash is safe (typed-in keys must be long and varied, see ``check_typed_key``), and the
lookup must stay cheap on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

from condagate.errors import BadRequest

KEY_PREFIX = "cg-"
_ALPHABET = string.ascii_letters + string.digits
_GENERATED_LENGTH = 40
MIN_TYPED_KEY_LENGTH = 24
MAX_KEY_LENGTH = 200
_MIN_DISTINCT_CHARACTERS = 10
# Unreserved URL characters: a typed-in key goes into channel URLs without percent-encoding.
_TYPED_KEY_RE = re.compile(r"[A-Za-z0-9._~-]+")


def generate_key() -> str:
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_GENERATED_LENGTH))


def check_typed_key(key: str) -> str:
    """A key an administrator typed in: long, varied and URL-safe, or a clear 400."""
    if not MIN_TYPED_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH:
        raise BadRequest(f"a typed-in API key must have {MIN_TYPED_KEY_LENGTH} to {MAX_KEY_LENGTH} characters")
    if not _TYPED_KEY_RE.fullmatch(key):
        raise BadRequest("a typed-in API key may hold only letters, digits and '.', '_', '~', '-'")
    if len(set(key)) < _MIN_DISTINCT_CHARACTERS:
        raise BadRequest(f"a typed-in API key must use at least {_MIN_DISTINCT_CHARACTERS} different characters")
    return key


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)


def new_secret_token() -> str:
    """A random id for a web session or a CSRF token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)
