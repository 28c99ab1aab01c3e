"""Encryption of stored upstream credentials (Fernet: AES-128-CBC with HMAC-SHA256).

The key comes from ``CONDAGATE_SECRET_KEY`` or, when that is unset, from ``secret.key`` beside the
data (created owner-only at the first start). A stolen database alone does not reveal upstream
tokens; whoever holds the key file too can decrypt them, so back it up apart from the database.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from condagate.errors import CondagateError

_PREFIX = "enc:v1:"


class SecretKeyError(CondagateError):
    code = "secret_key"


class SecretBox:
    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.strip().encode())
        except (ValueError, TypeError) as exc:
            raise SecretKeyError("the secret key is not a valid Fernet key (urlsafe base64 of 32 bytes)") from exc

    @classmethod
    def from_settings(cls, configured_key: str, key_file: Path) -> SecretBox:
        if configured_key:
            return cls(configured_key)
        if not key_file.exists():
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(Fernet.generate_key().decode() + "\n")
        return cls(key_file.read_text())

    def seal(self, value: str) -> str:
        if not value:
            return ""
        return _PREFIX + self._fernet.encrypt(value.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(_PREFIX):
            return stored  # written before encryption existed; sealed on the next start
        try:
            return self._fernet.decrypt(stored[len(_PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise SecretKeyError(
                "a stored upstream credential does not decrypt: CONDAGATE_SECRET_KEY or secret.key changed"
            ) from exc

    @staticmethod
    def is_sealed(stored: str) -> bool:
        return stored.startswith(_PREFIX)


_installed: SecretBox | None = None


def install(box: SecretBox) -> None:
    """Set once per process (``Services.open``): the store holds credentials sealed with it, and
    connector configurations are read in places that have no ``Services`` at hand."""
    global _installed
    _installed = box


def installed() -> SecretBox | None:
    return _installed
