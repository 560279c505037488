"""The users and API keys tables (``identity`` schema): the :class:`UserStore` port and auth."""

from __future__ import annotations

from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from application.users import EmailTaken, User


class PostgresUserStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def add(self, user: User, key_hash: bytes) -> None:
        try:
            with self.pool.connection() as conn, conn.transaction():
                conn.execute(
                    "INSERT INTO identity.users (id, email, admin) VALUES (%s, %s, %s)",
                    [user.id, user.email, user.admin],
                )
                conn.execute(
                    "INSERT INTO identity.api_keys (key_hash, user_id) VALUES (%s, %s)",
                    [key_hash, user.id],
                )
        except psycopg.errors.UniqueViolation:
            raise EmailTaken(f"a user with email {user.email!r} exists") from None

    def add_key(self, user_id: UUID, key_hash: bytes) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO identity.api_keys (key_hash, user_id) VALUES (%s, %s)",
                [key_hash, user_id],
            )

    def find_by_email(self, email: str) -> User | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT id, email, admin FROM identity.users WHERE lower(email) = lower(%s)",
                [email],
            ).fetchone()
        return User(*row) if row else None

    def exists(self, user_id: UUID) -> bool:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT 1 FROM identity.users WHERE id = %s", [user_id]).fetchone()
        return row is not None


async def user_for_key_hash(pool: AsyncConnectionPool, key_hash: bytes) -> User | None:
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            "SELECT u.id, u.email, u.admin FROM identity.api_keys k "
            "JOIN identity.users u ON u.id = k.user_id "
            "WHERE k.key_hash = %s AND k.revoked_at IS NULL",
            [key_hash],
        )
        row = await cursor.fetchone()
    return User(row["id"], row["email"], row["admin"]) if row else None


async def user_by_id(pool: AsyncConnectionPool, user_id: UUID) -> User | None:
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute("SELECT id, email, admin FROM identity.users WHERE id = %s", [user_id])
        row = await cursor.fetchone()
    return User(row["id"], row["email"], row["admin"]) if row else None
