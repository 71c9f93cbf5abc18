"""The MQTT outbox: every report waits here, on disk, until the broker has acknowledged it.

One SQLite file in the state directory, WAL, synchronous=FULL: a message counts as produced once
its row is committed, so a controller killed while the broker is away loses nothing. The same
file keeps each topic's last `seq` (strictly increasing across restarts) and the command ids
already answered (a replay after a restart is answered, never applied again).

Rows leave in id order; `state` rows not yet handed to the broker are coalesced into the newest,
which counts how many it replaced. Past `max_bytes` of payload, new messages are dropped and
counted (the receiver sees the gap in `seq`). Payloads are bytes in the site's [mqtt] encoding; the
file notes which, and rows queued in another are re-encoded when it is opened with a new one.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

COALESCED = ("state",)          # topics whose unsent messages only the newest matters of
MAX_IDS = 16384                 # answered command ids remembered (as the controller's own table)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                                   payload BLOB NOT NULL, retain INTEGER NOT NULL, replaced INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_topic ON outbox (topic, id);
CREATE TABLE IF NOT EXISTS seq (topic TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS answered (id TEXT PRIMARY KEY, verdict TEXT, keep_until REAL NOT NULL);
CREATE INDEX IF NOT EXISTS answered_keep ON answered (keep_until);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Row:
    id: int
    topic: str              # under the prefix: "state", "events", "evse/ID", "cmd/reply"
    payload: bytes
    retain: bool


class Outbox:
    """Not thread-safe: the MQTT service's thread owns it."""

    def __init__(self, path: Path, max_bytes: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_bytes = path, max_bytes
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.seqs = dict(self.db.execute("SELECT topic, last FROM seq"))
        self.bytes = self.db.execute("SELECT coalesce(sum(length(payload)), 0) FROM outbox").fetchone()[0]
        self.rows = self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self.dropped = 0
        self._open = False

    @contextlib.contextmanager
    def transaction(self, durable: bool = True):
        """One commit for everything inside (a transaction already open takes it in). durable:
        fsynced before it returns (synchronous=FULL); otherwise it survives a killed process, not
        a power cut, until the next durable commit (WAL, synchronous=NORMAL)."""
        if self._open:
            yield
            return
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db.execute("BEGIN IMMEDIATE")
        self._open = True
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self._open = False

    def close(self) -> None:
        self.db.close()

    def recode(self, encoding: str, convert) -> tuple[int, int]:
        """Rows queued in an encoding other than `encoding` (the site changed [mqtt] encoding while
        they waited) become convert(topic, payload) -> payload; (rows converted, rows left as they
        were because convert raised ValueError, TypeError or KeyError). A file without the note is
        older than the protobuf encoding: its rows are JSON."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'encoding'").fetchone()
        if row is not None and row[0] == encoding:
            return 0, 0
        done = failed = 0
        with self.transaction():
            if (row[0] if row else "json") != encoding:
                for i, topic, payload in self.db.execute("SELECT id, topic, payload FROM outbox").fetchall():
                    try:
                        new = convert(topic, bytes(payload))
                    except (ValueError, TypeError, KeyError):
                        failed += 1
                        continue
                    self.db.execute("UPDATE outbox SET payload = ? WHERE id = ?", (new, i))
                    done += 1
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('encoding', ?)", (encoding,))
        self.bytes = self.db.execute("SELECT coalesce(sum(length(payload)), 0) FROM outbox").fetchone()[0]
        return done, failed

    def next_seq(self, topic: str) -> int:
        """The topic's next seq, committed before it is used."""
        seq = self.seqs.get(topic, 0) + 1
        with self.transaction():
            self.db.execute("INSERT INTO seq VALUES (?, ?) ON CONFLICT(topic) DO UPDATE SET last = excluded.last",
                            (topic, seq))
        self.seqs[topic] = seq
        return seq

    def add(self, topic: str, encode, retain: bool = False, sent_up_to: int = 0) -> int | None:
        """Queue encode(seq, replaced) -> payload on topic; its row id, or None when the outbox is
        full (counted in `dropped`). sent_up_to: the rows up to this id are with the broker and
        are not coalesced."""
        with self.transaction():
            seq = self.next_seq(topic)
            replaced, freed, removed = 0, 0, 0
            if topic in COALESCED:
                old = self.db.execute("SELECT count(*), coalesce(sum(replaced), 0), coalesce(sum(length(payload)), 0) "
                                      "FROM outbox WHERE topic = ? AND id > ?", (topic, sent_up_to)).fetchone()
                removed, replaced, freed = old[0], old[0] + old[1], old[2]
            payload = encode(seq, replaced)
            if self.bytes - freed + len(payload) > self.max_bytes:
                self.dropped += 1
                return None
            if removed:
                self.db.execute("DELETE FROM outbox WHERE topic = ? AND id > ?", (topic, sent_up_to))
            cur = self.db.execute("INSERT INTO outbox (topic, payload, retain, replaced) VALUES (?, ?, ?, ?)",
                                  (topic, payload, int(retain), replaced))
        self.bytes += len(payload) - freed
        self.rows += 1 - removed
        return cur.lastrowid

    def after(self, row_id: int, limit: int) -> list[Row]:
        """The oldest rows after row_id, in order."""
        return [Row(i, t, bytes(p), bool(r)) for i, t, p, r in self.db.execute(
            "SELECT id, topic, payload, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (row_id, limit))]

    def remove(self, ids) -> None:
        """The broker acknowledged these rows."""
        ids = list(ids)
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self.transaction(durable=False):        # lost by a power cut: sent again, QoS 1 allows it
            size = self.db.execute(f"SELECT coalesce(sum(length(payload)), 0) FROM outbox WHERE id IN ({marks})",
                                   ids).fetchone()[0]
            gone = self.db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids).rowcount
        self.bytes -= size
        self.rows -= gone

    # ------------------------------------------------------------ answered command ids

    def answered(self, key: str) -> dict | None:
        """The verdict given to this command id ({"accepted", "code", "reason"}), if answered; a
        command whose verdict was never recorded (the process died between the two) is
        answered as a replay of unknown outcome: it may have been applied, so never again."""
        row = self.db.execute("SELECT verdict FROM answered WHERE id = ?", (key,)).fetchone()
        if row is None:
            return None
        if row[0] is None:
            return {"accepted": False, "code": "ERR_CMD_REPLAYED",
                    "reason": "command id already received before a restart; its outcome was not recorded, not applied again"}
        return json.loads(row[0])

    def begin(self, key: str, keep_until: float, now: float) -> None:
        """Note the id before the command reaches the controller. Not durable against a power cut:
        it is on the command's path to the loop, and after a power cut the loop has lost the
        command as well, so a replay restores it rather than applying it twice."""
        with self.transaction(durable=False):
            self.db.execute("DELETE FROM answered WHERE keep_until < ?", (now,))
            self.db.execute("INSERT OR REPLACE INTO answered VALUES (?, NULL, ?)", (key, keep_until))
            self.db.execute("DELETE FROM answered WHERE id IN (SELECT id FROM answered ORDER BY keep_until DESC "
                            "LIMIT -1 OFFSET ?)", (MAX_IDS,))

    def finish(self, key: str, verdict: dict | None) -> None:
        """The verdict given; None forgets the id (a transient refusal: the same id may come again)."""
        with self.transaction(durable=False):
            if verdict is None:
                self.db.execute("DELETE FROM answered WHERE id = ?", (key,))
            else:
                self.db.execute("UPDATE answered SET verdict = ? WHERE id = ?", (json.dumps(verdict), key))
