"""proxy hardening: breaker state, dropped records, sticky cache, redirect policy

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 08:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feeds") as batch:
        batch.add_column(sa.Column("upstream_removals", sa.String(length=20), nullable=False,
                                   server_default="keep-cached"))
    with op.batch_alter_table("connectors") as batch:
        batch.add_column(sa.Column("allow_redirects", sa.String(length=20), nullable=False,
                                   server_default="same-origin"))
    with op.batch_alter_table("connector_subdir_states") as batch:
        batch.add_column(sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("dropped_records", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("dropped_examples", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("cached_packages") as batch:
        batch.add_column(sa.Column("record", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("name", sa.String(length=200), nullable=False, server_default=""))
        batch.add_column(sa.Column("removed_upstream_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cached_packages") as batch:
        for column in ("removed_upstream_at", "name", "record"):
            batch.drop_column(column)
    with op.batch_alter_table("connector_subdir_states") as batch:
        for column in ("dropped_examples", "dropped_records", "next_try_at", "failing_since"):
            batch.drop_column(column)
    with op.batch_alter_table("connectors") as batch:
        batch.drop_column("allow_redirects")
    with op.batch_alter_table("feeds") as batch:
        batch.drop_column("upstream_removals")
