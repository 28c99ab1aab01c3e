"""Logging in to the web UI: a user name and password, or an API key, with failures rate-limited
per client address and per user name."""

from __future__ import annotations

from condagate.errors import AuthenticationRequired, BadRequest, CondagateError
from condagate.security.permissions import Principal
from condagate.services.context import Services


class TooManyFailures(CondagateError):
    status_code = 429
    code = "too_many_failures"


def log_in(services: Services, *, client: str, user: str, password: str, api_key: str) -> Principal:
    if not api_key and not (user and password):
        raise BadRequest("enter a user name and password, or an API key")
    # Counted before the check and taken back on success, as in the guard.
    limits = [(services.failed_logins, client)]
    if user and not api_key:
        limits.append((services.failed_user_logins, "user:" + user.lower()))
    for limiter, subject in limits:
        wait = limiter.attempt(subject)
        if wait:
            raise TooManyFailures(f"too many failed log-ins: try again in {int(wait) + 1} s")
    access = services.access
    principal = access.principal_for_key(api_key) if api_key else access.principal_for_password(user, password)
    if principal is None:
        raise AuthenticationRequired("the API key is not valid" if api_key else "the user name or password is wrong")
    for limiter, subject in limits:
        limiter.forgive(subject)
    return principal
