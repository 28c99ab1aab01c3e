"""The one error tree of condagate; the web layer maps every ``CondagateError`` to one JSON shape.

CondagateError                 (500, internal)
├── BadRequest                 (400)
│   ├── InvalidPackage         (400, invalid_package)
│   ├── ChecksumMismatch       (400, checksum_mismatch)
│   ├── InvalidName            (400, invalid_name)
│   ├── UnknownLicenseId       (400, unknown_license)
│   └── ImportRefused          (400, import_refused)
├── AuthenticationRequired     (401, authentication_required)
├── PermissionDenied           (403, permission_denied)
│   └── PackageBlocked         (403, package_blocked)
├── NotFound                   (404)
│   ├── FeedNotFound           (404, feed_not_found)
│   ├── SubdirNotFound         (404, subdir_not_found)
│   ├── PackageNotFound        (404, package_not_found)
│   ├── NotInSource            (404, not_in_source)
│   ├── NotPromoted            (404, not_promoted)
│   ├── PromotionLinkNotFound  (404, promotion_link_not_found)
│   ├── LicenseRuleNotFound    (404, license_rule_not_found)
│   └── AdvisoryNotFound       (404, advisory_not_found)
├── Conflict                   (409)
│   ├── FeedExists             (409, feed_exists)
│   ├── PackageExists          (409, package_exists)
│   ├── PolicyRefused          (409, policy_refused)
│   ├── NotAPromotionTarget    (409, not_a_promotion_target)
│   └── PromotionConflict      (409, promotion_conflict)
├── PackageBroken              (410, package_broken)
├── PayloadTooLarge            (413, payload_too_large)
├── RangeNotSatisfiable        (416, range_not_satisfiable)
├── UpstreamError              (502, upstream_error)
│   ├── UpstreamUnavailable    (502, upstream_unavailable)
│   └── UpstreamMismatch       (502, upstream_mismatch)
├── UpstreamTimeout            (504, upstream_timeout)
├── Busy                       (503, busy)
└── StorageUnavailable         (503, storage_unavailable)
"""

from __future__ import annotations


class CondagateError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(CondagateError):
    status_code = 400
    code = "bad_request"


class InvalidPackage(BadRequest):
    code = "invalid_package"


class ChecksumMismatch(BadRequest):
    code = "checksum_mismatch"


class InvalidName(BadRequest):
    code = "invalid_name"


class AuthenticationRequired(CondagateError):
    status_code = 401
    code = "authentication_required"


class PermissionDenied(CondagateError):
    status_code = 403
    code = "permission_denied"


class NotFound(CondagateError):
    status_code = 404
    code = "not_found"


class FeedNotFound(NotFound):
    code = "feed_not_found"


class SubdirNotFound(NotFound):
    code = "subdir_not_found"


class PackageNotFound(NotFound):
    code = "package_not_found"


class Conflict(CondagateError):
    status_code = 409
    code = "conflict"


class FeedExists(Conflict):
    code = "feed_exists"


class PackageExists(Conflict):
    code = "package_exists"


class PackageBroken(CondagateError):
    """A package file ``condagate check --repair`` marked broken: not listed, and its download says why."""

    status_code = 410
    code = "package_broken"


class PayloadTooLarge(CondagateError):
    status_code = 413
    code = "payload_too_large"


class RangeNotSatisfiable(CondagateError):
    status_code = 416
    code = "range_not_satisfiable"


class UpstreamError(CondagateError):
    """``public``: what callers who are not administrators read instead of the upstream's details."""

    status_code = 502
    code = "upstream_error"

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamMismatch(UpstreamError):
    """Condagate's own finding (size or checksum differ from the record): safe for everyone to read."""

    code = "upstream_mismatch"

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message, public if public is not None else message)


class UpstreamTimeout(CondagateError):
    status_code = 504
    code = "upstream_timeout"

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public


class Busy(CondagateError):
    """Too much work of one kind in flight right now (a bound, not a failure): try again later."""

    status_code = 503
    code = "busy"


class StorageUnavailable(CondagateError):
    """The blob store (an S3-compatible server) refused or did not answer: nothing was stored."""

    status_code = 503
    code = "storage_unavailable"


class NotInSource(NotFound):
    """A promotion asked for files the source feed cannot provide: nothing was promoted."""

    code = "not_in_source"


class NotPromoted(NotFound):
    """A revocation named a version that was never promoted into the feed."""

    code = "not_promoted"


class PromotionLinkNotFound(NotFound):
    code = "promotion_link_not_found"


class PolicyRefused(Conflict):
    """The feed's policy step (``services.policy``) refused a file entering the feed."""

    code = "policy_refused"


class NotAPromotionTarget(Conflict):
    code = "not_a_promotion_target"


class PromotionConflict(Conflict):
    """The target already holds a file of the same name with other bytes: nothing was promoted."""

    code = "promotion_conflict"


class UnknownLicenseId(BadRequest):
    code = "unknown_license"


class PackageBlocked(PermissionDenied):
    """A download of a package file the feed's SCA policy blocks (403): the message names the advisory
    or the license rule, and how to get it assessed."""

    code = "package_blocked"


class LicenseRuleNotFound(NotFound):
    code = "license_rule_not_found"


class ImportRefused(BadRequest):
    """An import as a whole cannot be read (not a zip or JSON, too many documents, too large)."""

    code = "import_refused"


class AdvisoryNotFound(NotFound):
    code = "advisory_not_found"
