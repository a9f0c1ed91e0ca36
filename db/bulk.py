"""Fast bulk inserts for the importer: the driver's own bulk path inside the session's transaction.

SQLAlchemy's executemany spends most of its time processing each bound value in Python (~10 s for
the 112k-row Data_Entry); `COPY ... FROM STDIN` on PostgreSQL and sqlite3's `executemany` with plain
tuples do the same work in a fraction of that. Only for plain columns: no ORM events, no defaults
(every column to fill must be given).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.orm import Session

from db.models import UTCDateTime

_SQLITE_CHUNK = 10_000


def bulk_insert(
    session: Session,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    constants: dict[str, Any] | None = None,
) -> int:
    """Insert `rows` (tuples in `columns` order, Python values) into `table`; returns len(rows).

    `constants`: column -> one value for every row (converted once, e.g. a timestamp).
    """
    if not rows:
        return 0
    connection = session.connection()  # joins (or begins) the session's transaction
    dialect = connection.dialect
    converters = [_converter(table.c[name].type, dialect) for name in columns]
    if any(convert is not None for convert in converters):
        rows = [
            tuple(
                value if convert is None else convert(value)
                for value, convert in zip(row, converters, strict=True)
            )
            for row in rows
        ]
    if constants:
        fixed = tuple(
            value if (convert := _converter(table.c[name].type, dialect)) is None else convert(value)
            for name, value in constants.items()
        )
        columns = [*columns, *constants]
        rows = [row + fixed for row in rows]
    driver_connection: Any = connection.connection.driver_connection
    column_list = ", ".join(f'"{name}"' for name in columns)
    if dialect.name == "postgresql":
        with driver_connection.cursor() as cursor:
            with cursor.copy(f'COPY "{table.name}" ({column_list}) FROM STDIN') as copy:
                for row in rows:
                    copy.write_row(row)
    else:
        placeholders = ", ".join("?" for _ in columns)
        statement = f'INSERT INTO "{table.name}" ({column_list}) VALUES ({placeholders})'
        cursor = driver_connection.cursor()
        try:
            for start in range(0, len(rows), _SQLITE_CHUNK):
                cursor.executemany(statement, rows[start : start + _SQLITE_CHUNK])
        finally:
            cursor.close()
    return len(rows)


def _converter(column_type: Any, dialect: Any) -> Any:
    if isinstance(column_type, JSON):
        return lambda value: None if value is None else json.dumps(value)
    if isinstance(column_type, UTCDateTime):
        if dialect.name == "postgresql":
            return None  # psycopg writes aware datetimes itself
        process = column_type.bind_processor(dialect)
        return process
    return None
