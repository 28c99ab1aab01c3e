"""vulnerability and license rules (SCA): advisories, name overrides, assessments, license rules, feed policies

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 10:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "advisories",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("modified", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn", sa.DateTime(timezone=True), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("aliases", sa.Text(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("severity_score", sa.Float(), nullable=True),
        sa.Column("severity_vector", sa.Text(), nullable=False),
        sa.Column("links", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=400), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "advisory_packages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "advisory_id", sa.String(length=100), sa.ForeignKey("advisories.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("ecosystem", sa.String(length=50), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("ranges", sa.Text(), nullable=False),
        sa.Column("versions", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_advisory_packages_advisory", "advisory_packages", ["advisory_id"])
    op.create_index("ix_advisory_packages_name", "advisory_packages", ["ecosystem", "name"])
    op.create_table(
        "package_name_overrides",
        sa.Column("conda_name", sa.String(length=200), nullable=False),
        sa.Column("ecosystem", sa.String(length=50), nullable=False),
        sa.Column("ecosystem_name", sa.String(length=200), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("conda_name", "ecosystem"),
    )
    op.create_table(
        "advisory_assessments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("advisory_id", sa.String(length=100), nullable=False),
        sa.Column("feed_id", sa.Integer(), sa.ForeignKey("feeds.id", ondelete="CASCADE"), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_advisory_assessments_advisory", "advisory_assessments", ["advisory_id", "feed_id"])
    op.create_table(
        "license_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feed_id", sa.Integer(), sa.ForeignKey("feeds.id", ondelete="CASCADE"), nullable=True),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_license_rules_feed", "license_rules", ["feed_id", "subject"])
    state = op.create_table(
        "sca_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(state, [{"id": 1, "revision": 0}])
    with op.batch_alter_table("feeds") as batch:
        batch.add_column(sa.Column("vulnerability_policy", sa.String(length=8), nullable=False, server_default="off"))
        batch.add_column(sa.Column("min_severity", sa.String(length=16), nullable=False, server_default="high"))
        batch.add_column(sa.Column("hide_blocked", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("license_policy", sa.String(length=8), nullable=False, server_default="off"))


def downgrade() -> None:
    with op.batch_alter_table("feeds") as batch:
        for column in ("license_policy", "hide_blocked", "min_severity", "vulnerability_policy"):
            batch.drop_column(column)
    for table in (
        "sca_state",
        "license_rules",
        "advisory_assessments",
        "package_name_overrides",
        "advisory_packages",
        "advisories",
    ):
        op.drop_table(table)
