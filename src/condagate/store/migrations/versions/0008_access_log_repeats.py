"""access log: identical requests within one flush are one row with a count and the first time

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 13:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.add_column(sa.Column("request_count", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("first_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.drop_column("first_at")
        batch.drop_column("request_count")
