"""Store: every detection and reading in SQLite first, with the outbox sync drains.

Public face: `store.Store` (the one writer thread, group commits, retention), `outbox.Outbox`
(rows kept until the broker acknowledges them), `db.connect` (the one way to open the file).
"""
