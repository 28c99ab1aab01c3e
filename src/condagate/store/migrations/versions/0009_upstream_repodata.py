"""upstream repodata state shared by replicas: the kept body's blob, its validators, its checked note

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 16:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upstream_repodata",
        sa.Column("connector_id", sa.Integer(), sa.ForeignKey("connectors.id", ondelete="CASCADE"), nullable=False),
        sa.Column("subdir", sa.String(32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("etag", sa.Text(), nullable=False),
        sa.Column("last_modified", sa.Text(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("validated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checks", sa.String(64), nullable=False),
        sa.Column("not_as_written", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("connector_id", "subdir"),
    )
    op.create_index("ix_upstream_repodata_sha256", "upstream_repodata", ["sha256"])


def downgrade() -> None:
    op.drop_index("ix_upstream_repodata_sha256", table_name="upstream_repodata")
    op.drop_table("upstream_repodata")
