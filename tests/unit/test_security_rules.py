"""Pure security rules: key alphabet and strength, redaction, permission implications, authorize()."""

from __future__ import annotations

import re

import pytest

from condagate.errors import AuthenticationRequired, BadRequest, FeedNotFound, PermissionDenied
from condagate.security.apikeys import check_typed_key, generate_key, hash_key, key_matches
from condagate.security.permissions import Permission, Principal, Scope, authorize, expand, parse_permission
from condagate.security.ratelimit import FailureLimiter
from condagate.security.redact import redact

# conda finds a channel token with this pattern (conda/common/url.py, split_anaconda_token; mamba's
# C++ port uses the same): whatever follows /t/ outside [a-zA-Z0-9-] is left in the path.
CONDA_TOKEN = re.compile(r"/t/([a-zA-Z0-9-]*)")


def conda_token_of(url: str) -> str | None:
    found = CONDA_TOKEN.search(url)
    return found.group(1) if found else None


def test_generated_keys_survive_condas_token_pattern():
    for _ in range(200):
        key = generate_key()
        assert conda_token_of(f"http://host:8624/t/{key}/conda/feed/noarch/repodata.json") == key
        assert re.fullmatch(r"cg-[A-Za-z0-9]{40}", key)
    # the old shape (cg_ + urlsafe base64) did not: conda cut it at the underscore
    assert conda_token_of("http://host/t/cg_abc/conda/feed") == "cg"


def test_keys_are_compared_by_hash():
    key = generate_key()
    assert key_matches(key, hash_key(key))
    assert not key_matches(key + "x", hash_key(key))


@pytest.mark.parametrize(
    ("typed", "problem"),
    [
        ("short-key", "24 to 200"),
        ("a" * 30, "different characters"),
        ("has space in it 0123456789abcdef", "only letters"),
        ("colon:inside-0123456789abcdefghij", "only letters"),
        ("x" * 201, "24 to 200"),
    ],
)
def test_weak_or_unsafe_typed_keys_are_refused(typed: str, problem: str):
    with pytest.raises(BadRequest, match=problem):
        check_typed_key(typed)


def test_a_strong_typed_key_is_accepted():
    assert check_typed_key("team-ci.key_2026~abcdefghijklmnop") == "team-ci.key_2026~abcdefghijklmnop"


@pytest.mark.parametrize(
    "text",
    [
        "GET /t/{key}/conda/feed/noarch/repodata.json",
        "GET //t/{key}/conda/feed",
        "GET /T/{key}/conda/feed",
        "fetching http://api:{key}@127.0.0.1:8624/conda/feed failed",
        "header Authorization: Bearer {key}",
        "x-api-key={key}",
        '{{"X-API-Key": "{key}"}}',
        "/login?api_key={key}&next=/",
        "token {key} refused",
    ],
)
def test_redaction_removes_keys_in_every_spelling(text: str):
    key = generate_key()
    redacted = redact(text.format(key=key))
    assert key not in redacted
    assert key[3:20] not in redacted


def test_redaction_keeps_ordinary_text():
    text = "GET /conda/feed/noarch/numpy-1.26.4-py311h0_0.conda 200 from 127.0.0.1"
    assert redact(text) == text


def test_permissions_imply_view_and_admin_everything():
    assert expand({Permission.ADD}) == {Permission.ADD, Permission.VIEW}
    assert expand({Permission.MANAGE_FEED}) >= {Permission.ADD, Permission.DELETE, Permission.VIEW}
    assert Permission.PROMOTE not in expand({Permission.MANAGE_FEED})
    assert expand({Permission.ADMIN}) >= {Permission.PROMOTE, Permission.MANAGE_FEED, Permission.DELETE}


def test_unknown_permission_names_are_a_clear_400():
    with pytest.raises(BadRequest, match="choose one of view, add"):
        parse_permission("write")
    with pytest.raises(BadRequest):
        parse_permission("public")  # a route declaration, not something to grant


def test_authorize_decides_401_403_404():
    reader = Principal("r", authenticated=True, feeds={"a": frozenset({Permission.VIEW})})
    authorize(reader, Permission.VIEW, Scope.FEED, "a")
    with pytest.raises(PermissionDenied):
        authorize(reader, Permission.ADD, Scope.FEED, "a")
    with pytest.raises(FeedNotFound):
        authorize(reader, Permission.VIEW, Scope.FEED, "b")
    authorize(reader, Permission.VIEW, Scope.ANY)
    with pytest.raises(PermissionDenied):
        authorize(reader, Permission.VIEW, Scope.SYSTEM)
    with pytest.raises(AuthenticationRequired):
        authorize(Principal("anonymous"), Permission.VIEW, Scope.FEED, "a")
    everyone = Principal("anonymous", system=frozenset({Permission.VIEW}))
    authorize(everyone, Permission.VIEW, Scope.FEED, "anything")
    with pytest.raises(AuthenticationRequired):
        authorize(everyone, Permission.ADD, Scope.FEED, "anything")


def test_failure_limiter_counts_attempts_before_checking_them():
    limiter = FailureLimiter(limit=3, window=60)
    # three concurrent attempts are all counted before any of them is checked
    assert [limiter.attempt("192.0.2.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert 0 < limiter.attempt("192.0.2.1") <= 60
    assert limiter.attempt("192.0.2.2") == 0
    # a success takes back only its own attempt: one right key does not wipe earlier failures
    limiter.forgive("192.0.2.2")
    limiter.forgive("192.0.2.1")
    assert limiter.attempt("192.0.2.1") == 0.0
    assert limiter.attempt("192.0.2.1") > 0
