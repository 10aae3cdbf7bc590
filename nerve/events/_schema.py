"""The schema of ``logs.db``: linear migrations, never edited once released.

To change the schema, append a migration; the checksum of each applied one is
stored, and a database whose history differs from this list is refused.
"""

from __future__ import annotations

from typing import Final

from ._sqlite import Migration

#: ``PRAGMA application_id`` of a nerve log ("nrvl").
LOG_APPLICATION_ID: Final = 0x6E72766C

MIGRATIONS: Final = (
    Migration(
        1,
        "the log, metadata, idempotency keys, projection checkpoints, full-text index",
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID;

        -- The log. position is the rowid: appends are ordered B-tree appends.
        -- payload is JSON text, or NULL when the payload lives in the blob store
        -- under the sha256 in blob. hash chains the previous row's hash.
        CREATE TABLE logs (
            position     INTEGER PRIMARY KEY,
            stream       TEXT    NOT NULL,
            version      INTEGER NOT NULL,
            type         TEXT    NOT NULL,
            type_version INTEGER NOT NULL DEFAULT 1,
            source       TEXT    NOT NULL DEFAULT '',
            ts           INTEGER NOT NULL,
            payload      TEXT,
            blob         TEXT,
            meta         TEXT,
            hash         BLOB    NOT NULL,
            UNIQUE (stream, version)
        );

        CREATE TABLE idempotency (
            key            TEXT PRIMARY KEY,
            stream         TEXT    NOT NULL,
            first_position INTEGER NOT NULL,
            last_position  INTEGER NOT NULL,
            version        INTEGER NOT NULL
        ) WITHOUT ROWID;

        -- Stream versions of streams whose events all moved to the archive, so
        -- that expected_version checks stay right after archiving.
        CREATE TABLE archived_streams (
            stream  TEXT PRIMARY KEY,
            version INTEGER NOT NULL
        ) WITHOUT ROWID;

        -- Checkpoints of the projections kept in this database (workflow_runs):
        -- they commit in the same transaction as the projection's rows.
        CREATE TABLE projections (
            name     TEXT PRIMARY KEY,
            version  INTEGER NOT NULL,
            position INTEGER NOT NULL
        ) WITHOUT ROWID;

        -- What full-text search sees of an event: its type, its stream and
        -- the values in its payload (decoded: "a\\nb" is two words, and JSON
        -- keys and punctuation are not indexed).
        CREATE VIEW logs_text AS
            SELECT position, type, stream,
                   (SELECT group_concat(value, ' ') FROM json_tree(logs.payload)
                     WHERE json_tree.type IN ('text', 'integer', 'real')) AS payload
              FROM logs;

        -- External-content FTS5 over that view: the text lives once, in logs.
        -- It is filled by one INSERT ... SELECT per write batch, not by a
        -- per-row trigger.
        CREATE VIRTUAL TABLE logs_fts USING fts5(
            type, stream, payload,
            content='logs_text', content_rowid='position',
            tokenize='unicode61 remove_diacritics 2'
        );
        """,
    ),
)
