"""SQLAlchemy models of condagate's metadata."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import true as sa_true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Feed(Base):
    __tablename__ = "feeds"
    # Never reuse the id of a deleted feed: per-process caches are keyed by it.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # What happens to a cached file when its upstream removes it: "keep-cached" or "follow-upstream".
    upstream_removals: Mapped[str] = mapped_column(String(20), default="keep-cached", server_default="keep-cached")
    # SCA: "off", "warn" or "block"; advisories below ``min_severity`` are not acted on.
    vulnerability_policy: Mapped[str] = mapped_column(String(8), default="off", server_default="off")
    min_severity: Mapped[str] = mapped_column(String(16), default="high", server_default="high")
    # Blocked records are left out of the repodata (a solver then picks a safe version).
    hide_blocked: Mapped[bool] = mapped_column(Boolean, default=True, server_default=sa_true())
    license_policy: Mapped[str] = mapped_column(String(8), default="off", server_default="off")


class SubdirState(Base):
    """One row per feed and subdir: its revision grows with every change to its records."""

    __tablename__ = "subdir_states"

    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), primary_key=True)
    subdir: Mapped[str] = mapped_column(String(32), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    # Bumped when records disappear, which an incremental reader cannot see by revision alone.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PackageFile(Base):
    __tablename__ = "package_files"
    __table_args__ = (
        UniqueConstraint("feed_id", "subdir", "filename", name="uq_package_file"),
        Index("ix_package_files_revision", "feed_id", "subdir", "revision"),
        Index("ix_package_files_name", "feed_id", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"))
    subdir: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(400))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    build: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    md5: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    record: Mapped[str] = mapped_column(Text)
    about: Mapped[str] = mapped_column(Text, default="{}")
    revision: Mapped[int] = mapped_column(BigInteger)
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    uploaded_by: Mapped[str] = mapped_column(String(200), default="")
    # Set by ``condagate check --repair`` when the file's blob is missing or holds other bytes, or its
    # record disagrees with these columns: the row stays (to be re-uploaded or deleted) but is not served.
    broken_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class User(Base):
    """A local user; ``name_key`` (the name in lower case) makes names unique regardless of case."""

    __tablename__ = "users"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Group(Base):
    __tablename__ = "groups"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class Grant(Base):
    """One permission for a user, a group or anonymous callers, system-wide (no feed) or on one feed."""

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    principal_kind: Mapped[str] = mapped_column(String(16))  # "user", "group" or "anonymous"
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), nullable=True)
    permission: Mapped[str] = mapped_column(String(32))
    feed_id: Mapped[int | None] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(200), default="")


class ApiKey(Base):
    """A key acts as its user (narrowed by ``permissions`` when set), or, without a user, holds exactly
    ``permissions``: system-wide (scope "system") or on the feeds in ``api_key_feeds`` (scope "feeds")."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    permissions: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)
    scope: Mapped[str] = mapped_column(String(16), default="system", server_default="system")
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_by: Mapped[str] = mapped_column(String(200), default="", server_default="")
    hint: Mapped[str] = mapped_column(String(16), default="", server_default="")  # first characters, to recognise it


class ApiKeyFeed(Base):
    __tablename__ = "api_key_feeds"

    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), primary_key=True)


class UiSession(Base):
    """A web UI log-in: only the sha256 of the cookie's random id is stored."""

    __tablename__ = "ui_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AccessLogEntry(Base):
    """Requests made with an API key (or by a logged-in user): written in batches, off the request path.
    Identical requests (who, from where, method, path, status) within one batch are one row: a CI fleet's
    thousands of revalidations cost the database a row per batch, not one each."""

    __tablename__ = "access_log"
    __table_args__ = (Index("ix_access_log_key_time", "api_key_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=True)
    principal: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    client: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    request_count: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    first_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # None: at


class SecurityState(Base):
    """One row: its revision grows with every change to users, groups, grants, keys or feeds, so that
    each process knows when its cached security snapshot is out of date."""

    __tablename__ = "security_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


class PrincipalDownload(Base):
    """Downloads per feed, file, day and who downloaded (user, key or anonymous)."""

    __tablename__ = "principal_downloads"

    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), primary_key=True)
    filename: Mapped[str] = mapped_column(String(400), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    principal: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class DownloadCount(Base):
    __tablename__ = "download_counts"

    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), primary_key=True)
    subdir: Mapped[str] = mapped_column(String(32), primary_key=True)
    filename: Mapped[str] = mapped_column(String(400), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    name: Mapped[str] = mapped_column(String(200), default="", server_default="", index=True)


class Connector(Base):
    """An upstream conda channel that feeds proxy; credentials are sent upstream, never shown back."""

    __tablename__ = "connectors"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are cache keys: never reuse a deleted one

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    url: Mapped[str] = mapped_column(Text)
    subdirs: Mapped[str] = mapped_column(Text, default="")
    include: Mapped[str] = mapped_column(Text, default="")
    exclude: Mapped[str] = mapped_column(Text, default="")
    cache_minutes: Mapped[int] = mapped_column(Integer, default=30)
    timeout_seconds: Mapped[int] = mapped_column(Integer, default=30)
    username: Mapped[str] = mapped_column(Text, default="")
    password: Mapped[str] = mapped_column(Text, default="")
    token: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # "same-origin" (default) or "any-public": where the upstream's redirects may lead.
    allow_redirects: Mapped[str] = mapped_column(String(20), default="same-origin", server_default="same-origin")


class FeedConnector(Base):
    __tablename__ = "feed_connectors"

    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), primary_key=True)
    connector_id: Mapped[int] = mapped_column(ForeignKey("connectors.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class ConnectorSubdirState(Base):
    """The health of one connector's subdir: last refresh, last error, response time."""

    __tablename__ = "connector_subdir_states"

    connector_id: Mapped[int] = mapped_column(ForeignKey("connectors.id", ondelete="CASCADE"), primary_key=True)
    subdir: Mapped[str] = mapped_column(String(32), primary_key=True)
    etag: Mapped[str] = mapped_column(Text, default="")
    records: Mapped[int] = mapped_column(Integer, default=0)
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    response_ms: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    next_try_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    dropped_records: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    dropped_examples: Mapped[str] = mapped_column(Text, default="", server_default="")  # JSON list


class CachedPackage(Base):
    """An upstream package file fetched once and kept in the blob store."""

    __tablename__ = "cached_packages"

    connector_id: Mapped[int] = mapped_column(ForeignKey("connectors.id", ondelete="CASCADE"), primary_key=True)
    subdir: Mapped[str] = mapped_column(String(32), primary_key=True)
    filename: Mapped[str] = mapped_column(String(400), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    cached_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The record as the upstream listed it when the file was cached: a feed keeps serving it after
    # the upstream removes it ("sticky cache").
    record: Mapped[str] = mapped_column(Text, default="", server_default="")
    name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    removed_upstream_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UpstreamRepodata(Base):
    """The last good repodata of one connector subdir, shared by every replica: the body as kept
    (repodata.json.zst) in the blob store, the validators the upstream sent with it, and which of its
    records the checks dropped or rewrote (``checks``: the fingerprint of the code of the checks), so
    that a replica reads it without checking every record again."""

    __tablename__ = "upstream_repodata"

    connector_id: Mapped[int] = mapped_column(ForeignKey("connectors.id", ondelete="CASCADE"), primary_key=True)
    subdir: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)  # the connector's address it was fetched from
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # the blob
    size: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str] = mapped_column(Text, default="")
    last_modified: Mapped[str] = mapped_column(Text, default="")
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # this body arrived (200)
    validated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # its last 200 or 304
    checks: Mapped[str] = mapped_column(String(64), default="")
    # JSON list of the file names not served as written; NULL: unknown (every record is checked on load).
    not_as_written: Mapped[str | None] = mapped_column(Text, nullable=True)


class PromotionTarget(Base):
    """A feed that package versions may be promoted into from ``source_feed_id`` (the approval flow)."""

    __tablename__ = "promotion_targets"

    source_feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), primary_key=True)
    target_feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(200), default="")


class Promotion(Base):
    """One promoted (or revoked) file: the audit trail. Feeds are kept by name, so that the history
    outlives them; ``request_id`` groups the files of one request."""

    __tablename__ = "promotions"
    __table_args__ = (
        Index("ix_promotions_source", "source_feed", "at"),
        Index("ix_promotions_target", "target_feed", "at"),
        Index("ix_promotions_name", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(32), index=True)
    action: Mapped[str] = mapped_column(String(16))  # "promote" or "revoke"
    source_feed: Mapped[str] = mapped_column(String(100))
    target_feed: Mapped[str] = mapped_column(String(100))
    subdir: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(400))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    build: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The package's vulnerability and license state when it was promoted (JSON; "{}" before SCA).
    assessment: Mapped[str] = mapped_column(Text, default="{}")


class Advisory(Base):
    """One imported OSV advisory. ``aliases`` and ``links`` are JSON lists; ``severity`` is a level
    (none, low, medium, high, critical, unknown) derived from the CVSS vector when there is one."""

    __tablename__ = "advisories"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    modified: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    withdrawn: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[str] = mapped_column(Text, default="")
    aliases: Mapped[str] = mapped_column(Text, default="[]")
    severity: Mapped[str] = mapped_column(String(16), default="unknown")
    severity_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    severity_vector: Mapped[str] = mapped_column(Text, default="")
    links: Mapped[str] = mapped_column(Text, default="[]")
    source: Mapped[str] = mapped_column(String(400), default="")  # the file it was imported from
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AdvisoryPackage(Base):
    """One ``affected`` entry of an advisory: a package of an ecosystem (e.g. PyPI) and the versions
    it affects (``ranges``: the OSV ranges as JSON, ``versions``: the explicit list as JSON)."""

    __tablename__ = "advisory_packages"
    __table_args__ = (
        Index("ix_advisory_packages_advisory", "advisory_id"),
        Index("ix_advisory_packages_name", "ecosystem", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    advisory_id: Mapped[str] = mapped_column(ForeignKey("advisories.id", ondelete="CASCADE"))
    ecosystem: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(200))  # normalised the ecosystem's way (PEP 503 for PyPI)
    ranges: Mapped[str] = mapped_column(Text, default="[]")
    versions: Mapped[str] = mapped_column(Text, default="[]")


class PackageNameOverride(Base):
    """An administrator's mapping of a conda package name to an ecosystem's name; ``ecosystem_name``
    None means "this conda package has no counterpart there"."""

    __tablename__ = "package_name_overrides"

    conda_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    ecosystem: Mapped[str] = mapped_column(String(50), primary_key=True)
    ecosystem_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AdvisoryAssessment(Base):
    """An administrator's verdict on an advisory (ignore, caution, block), system-wide (``feed_id``
    None) or for one feed; the newest row for an advisory and feed is in force, older ones are history."""

    __tablename__ = "advisory_assessments"
    __table_args__ = (Index("ix_advisory_assessments_advisory", "advisory_id", "feed_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    advisory_id: Mapped[str] = mapped_column(String(100))
    feed_id: Mapped[int | None] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), nullable=True)
    verdict: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(200), default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LicenseRule(Base):
    """Allow or block a license (an SPDX id) system-wide (``feed_id`` None) or for one feed; the
    subject "unknown" stands for packages whose license is not recognised (allow, warn or block)."""

    __tablename__ = "license_rules"
    __table_args__ = (Index("ix_license_rules_feed", "feed_id", "subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed_id: Mapped[int | None] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), nullable=True)
    subject: Mapped[str] = mapped_column(String(200))
    verdict: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(200), default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ScaState(Base):
    """One row: its revision grows with every change to advisories, assessments, license rules or a
    feed's SCA policy, so that each process knows when its filtered repodata is out of date."""

    __tablename__ = "sca_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
