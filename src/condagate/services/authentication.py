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
    subjects = [client] + ([f"user:{user.lower()}"] if user and not api_key else [])
    for subject, limiter in zip(subjects, (services.failed_logins, services.failed_user_logins), strict=False):
        wait = limiter.retry_after(subject)
        if wait:
            raise TooManyFailures(f"too many failed log-ins: try again in {int(wait) + 1} s")
    access = services.access
    principal = access.principal_for_key(api_key) if api_key else access.principal_for_password(user, password)
    if principal is None:
        for subject, limiter in zip(subjects, (services.failed_logins, services.failed_user_logins), strict=False):
            limiter.failed(subject)
        raise AuthenticationRequired("the API key is not valid" if api_key else "the user name or password is wrong")
    for subject, limiter in zip(subjects, (services.failed_logins, services.failed_user_logins), strict=False):
        limiter.succeeded(subject)
    return principal
