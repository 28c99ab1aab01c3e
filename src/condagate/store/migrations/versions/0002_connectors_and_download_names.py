"""connectors and download names

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 13:20:36.031900
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connectors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("subdirs", sa.Text(), nullable=False),
        sa.Column("include", sa.Text(), nullable=False),
        sa.Column("exclude", sa.Text(), nullable=False),
        sa.Column("cache_minutes", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("password", sa.Text(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "cached_packages",
        sa.Column("connector_id", sa.Integer(), nullable=False),
        sa.Column("subdir", sa.String(length=32), nullable=False),
        sa.Column("filename", sa.String(length=400), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("cached_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["connector_id"], ["connectors.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("connector_id", "subdir", "filename"),
    )
    with op.batch_alter_table("cached_packages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cached_packages_sha256"), ["sha256"], unique=False)

    op.create_table(
        "connector_subdir_states",
        sa.Column("connector_id", sa.Integer(), nullable=False),
        sa.Column("subdir", sa.String(length=32), nullable=False),
        sa.Column("etag", sa.Text(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("response_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["connector_id"], ["connectors.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("connector_id", "subdir"),
    )
    op.create_table(
        "feed_connectors",
        sa.Column("feed_id", sa.Integer(), nullable=False),
        sa.Column("connector_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["connector_id"], ["connectors.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["feed_id"], ["feeds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("feed_id", "connector_id"),
    )
    with op.batch_alter_table("download_counts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=200), nullable=False, server_default=""))
        batch_op.create_index(batch_op.f("ix_download_counts_name"), ["name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("download_counts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_download_counts_name"))
        batch_op.drop_column("name")

    op.drop_table("feed_connectors")
    op.drop_table("connector_subdir_states")
    with op.batch_alter_table("cached_packages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cached_packages_sha256"))

    op.drop_table("cached_packages")
    op.drop_table("connectors")
