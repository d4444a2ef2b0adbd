"""Consent tracking: the ``consent`` table (registry/consent.py).

Revision ID: 0003_consent
Revises: 0002_rollouts
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_consent"
down_revision: str | None = "0002_rollouts"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # a database made by create_all (stamped at 0002_rollouts) may have the table already
    if sa.inspect(op.get_bind()).has_table("consent"):
        return
    op.create_table(
        "consent",
        sa.Column("user", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("user", "purpose"),
    )


def downgrade() -> None:
    op.drop_table("consent")
