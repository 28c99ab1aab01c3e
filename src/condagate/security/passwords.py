"""User passwords: argon2id through pwdlib.

Parameters (pwdlib's Argon2Hasher, the argon2-cffi defaults): argon2id, time cost 3, memory 64 MiB,
parallelism 4, 16-byte salt, 32-byte hash. A hash records its own parameters, so changing them
later still verifies old hashes.
"""

from __future__ import annotations

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from condagate.errors import BadRequest

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

_hasher = PasswordHash((Argon2Hasher(),))
# Verified against when a user does not exist, so that "no such user" costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("condagate-no-such-user")


def check_password_rules(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise BadRequest(f"a password must have {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")
    if not password.isprintable():
        raise BadRequest("a password may not hold control characters")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password_rules(password))


def verify_password(password: str, stored_hash: str | None) -> bool:
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    if not stored_hash:
        _hasher.verify(password, _DUMMY_HASH)
        return False
    try:
        return bool(_hasher.verify(password, stored_hash))
    except Exception:  # a damaged stored hash is a failed log-in, not a crash
        return False
