"""package files marked broken by ``condagate check --repair``

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("package_files") as batch:
        batch.add_column(sa.Column("broken_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("package_files") as batch:
        batch.drop_column("checked_at")
        batch.drop_column("broken_reason")
