"""promotion targets (source feed -> target feed) and the promotion history

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "promotion_targets",
        sa.Column("source_feed_id", sa.Integer(), sa.ForeignKey("feeds.id", ondelete="CASCADE"), nullable=False),
        sa.Column("target_feed_id", sa.Integer(), sa.ForeignKey("feeds.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("source_feed_id", "target_feed_id"),
    )
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("source_feed", sa.String(length=100), nullable=False),
        sa.Column("target_feed", sa.String(length=100), nullable=False),
        sa.Column("subdir", sa.String(length=32), nullable=False),
        sa.Column("filename", sa.String(length=400), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("build", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("assessment", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_promotions_request_id", "promotions", ["request_id"])
    op.create_index("ix_promotions_source", "promotions", ["source_feed", "at"])
    op.create_index("ix_promotions_target", "promotions", ["target_feed", "at"])
    op.create_index("ix_promotions_name", "promotions", ["name"])


def downgrade() -> None:
    op.drop_table("promotions")
    op.drop_table("promotion_targets")
