"""Commands and desired config over MQTT: checked, run once, answered.

paho's network thread only does the cheap checks (topic, size, JSON, schema,
response topic, expiry) and hands work to one bounded queue. The device's Receive Maximum (CONNECT) is that
queue's size, so a broker holds what does not fit; should it send more anyway, a
command is answered `busy` (counted), while a desired config waits in a slot of
its own where a newer version supersedes it: it is never dropped. One worker thread runs commands and config
changes in arrival order. Answers go to the MQTT v5 response topic with the
correlation data echoed, and only under `<prefix>/<device>/response/`. A
message is acknowledged to the broker after it was handled, and the answers of
commands that change something are kept in SQLite under the command id, so a
redelivery (the agent died, or the link dropped, before the ack) gets the kept
answer instead of running twice. Nothing malformed can stop either thread.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import sqlite_utils
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config import key_path
from agent.control.commands import CommandError, Commands, Envelope
from agent.control.config_service import ConfigService
from agent.store.db import connect, transaction
from agent.sync.mqtt_link import MqttLink, PacketTooLarge

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024
MAX_DESIRED_BYTES = 256 * 1024
QUEUE_SIZE = 32
KEPT_ANSWERS = 1000  # answers kept for redeliveries; the oldest go first


class DesiredDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: int = Field(ge=1, le=2**62)
    config: dict[str, Any]


@dataclass
class _Job:
    kind: str  # command | desired | report | restore
    message: mqtt.MQTTMessage | None = None
    connection: int = 0
    name: str = ""
    envelope: Envelope | None = None
    args: BaseModel | None = None
    desired: DesiredDoc | None = None
    deadline: float | None = None  # time.monotonic() past which the command is not run
    ack: bool = True  # False when the answer could not be handed to paho: the redelivery gets it


class _Refused(Exception):
    def __init__(self, code: str, message: str, details: Any = None, cmd_id: str | None = None) -> None:
        self.code = code
        self.details = details
        self.cmd_id = cmd_id
        super().__init__(message)


def _pydantic_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    return [{"path": ".".join(p for p in (prefix, key_path(err["loc"])) if p), "message": err["msg"]}
            for err in exc.errors()]


class CommandChannel:
    def __init__(self, link: MqttLink, commands: Commands, config: ConfigService, db_path: Path) -> None:
        self.link = link
        self.commands = commands
        self.config = config
        self._db_path = db_path
        self.cmd_prefix = f"{link.base}/cmd/"
        self.desired_topic = f"{link.base}/config/desired"
        self.reported_topic = f"{link.base}/config/reported"
        self.response_prefix = f"{link.base}/response/"
        self.counts: collections.Counter[str] = collections.Counter()
        self._counts_lock = threading.Lock()
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=QUEUE_SIZE)
        self._waiting_desired: _Job | None = None  # a desired config that found the queue full
        self._waiting_lock = threading.Lock()
        self._report_due = threading.Event()  # a connect whose report did not fit in the queue
        self._restore_due = threading.Event()  # the stored overlay could not be read at start; now it can
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._db: sqlite_utils.Database | None = None  # opened by the worker when the store's file is usable
        self._answers_in_memory: collections.OrderedDict[str, str] = collections.OrderedDict()  # bounded
        link.subscriptions += [f"{self.cmd_prefix}+", self.desired_topic]
        link.on_message = self._on_message
        link.receive_maximum = QUEUE_SIZE  # the broker keeps the rest until we acknowledge
        link.on_connected.append(lambda: self._enqueue(_Job("report")) or self._report_due.set())

    def start(self) -> None:
        self._thread.start()

    def restore_stored_config(self) -> None:
        """The store's database opened late: restore the fleet's overlay in turn with commands, then report."""
        self._restore_due.set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        with self._counts_lock:
            return {**self.counts, "queued": self._queue.qsize()}

    def _count(self, name: str, by: int = 1) -> None:
        with self._counts_lock:  # both the network thread and the worker count
            self.counts[name] += by

    # -- network thread: cheap checks, then the queue ------------------------------
    def _on_message(self, message: mqtt.MQTTMessage, connection: int) -> None:
        self._count("received")
        try:
            job = self._parse(message, connection)
        except _Refused as exc:
            self._count_bad(message, exc.code, str(exc))
            self._answer(message, {"id": exc.cmd_id, "ok": False, "error": _error(exc.code, str(exc), exc.details)})
            self.link.ack(message, connection)
            return
        if job is None:
            self.link.ack(message, connection)
            return
        if self._enqueue(job):
            return
        if job.kind == "desired":
            self._wait_in_slot(job)
        else:
            self._answer(message, {"id": job.envelope.id if job.envelope else None, "ok": False,
                                   "error": _error("busy", "too many commands waiting; try again")})
            self.link.ack(message, connection)

    def _wait_in_slot(self, job: _Job) -> None:
        with self._waiting_lock:
            older, self._waiting_desired = self._waiting_desired, job
        if older is not None:  # only the newest desired config matters: the older one is done with
            self._count("desired_superseded")
            self.link.ack(older.message, older.connection)

    def _take_waiting(self) -> _Job | None:
        if self._restore_due.is_set():
            self._restore_due.clear()
            return _Job("restore")
        if self._report_due.is_set():
            self._report_due.clear()
            return _Job("report")
        with self._waiting_lock:
            job, self._waiting_desired = self._waiting_desired, None
        return job

    def _enqueue(self, job: _Job) -> bool:
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            self._count("busy")
            return False

    def _parse(self, message: mqtt.MQTTMessage, connection: int) -> _Job | None:
        if message.topic == self.desired_topic:
            return self._parse_desired(message, connection)
        response = _prop(message, "ResponseTopic")
        if response is not None and not self._response_allowed(response):
            self._count_bad(message, "refused", f"response topic {response!r} is not under {self.response_prefix}")
            return None  # never publish where we were not asked to be able to
        if message.retain:
            raise _Refused("bad_request", "retained commands are refused (they would run on every connect)")
        name = message.topic[len(self.cmd_prefix):]
        if name not in self.commands.catalogue:
            raise _Refused("unknown_command", f"unknown command {name[:64]!r}; known: "
                           + ", ".join(sorted(self.commands.catalogue)))
        body = _json(message.payload, MAX_COMMAND_BYTES)
        cmd_id = body.get("id") if isinstance(body, dict) and isinstance(body.get("id"), str) else None
        cmd_id = cmd_id if cmd_id is not None and len(cmd_id) <= 64 else None  # echoed only when sane
        try:
            envelope = Envelope.model_validate(body)
        except ValidationError as exc:
            raise _Refused("bad_request", "invalid command envelope", _pydantic_errors(exc), cmd_id) from None
        try:
            args = self.commands.catalogue[name][0].model_validate(envelope.args)
        except ValidationError as exc:
            raise _Refused("bad_request", "invalid arguments", _pydantic_errors(exc, "args"), cmd_id) from None
        expiry = _prop(message, "MessageExpiryInterval")
        deadline = None if expiry is None else time.monotonic() + expiry
        return _Job("command", message, connection, name, envelope, args, deadline=deadline)

    def _parse_desired(self, message: mqtt.MQTTMessage, connection: int) -> _Job | None:
        if not message.payload:
            return None  # the retained desired config was cleared
        try:
            desired = DesiredDoc.model_validate(_json(message.payload, MAX_DESIRED_BYTES))
        except (_Refused, ValidationError) as exc:
            errors = _pydantic_errors(exc) if isinstance(exc, ValidationError) else [
                {"path": "(payload)", "message": str(exc)}]
            self._count_bad(message, "bad_request", "; ".join(f"{e['path']}: {e['message']}" for e in errors))
            self._count("desired_rejected")
            self._publish_report({**self.config.reported(), "status": "rejected", "version": None, "errors": errors})
            return None
        return _Job("desired", message, connection, desired=desired)

    def _response_allowed(self, topic: str) -> bool:
        return topic.startswith(self.response_prefix) and len(topic) > len(self.response_prefix) \
            and not any(c in topic for c in "+#\x00")

    def _count_bad(self, message: mqtt.MQTTMessage, code: str, text: str) -> None:
        self._count("malformed" if code != "refused" else "refused")
        n = self.counts["malformed"] + self.counts["refused"]
        if n <= 10 or n % 100 == 0:  # counted always, logged sparingly: a flood must not flood the log
            log.warning("mqtt: %s on %s (%s; %d so far)", code, message.topic[:200], text[:300], n)

    # -- answers ------------------------------------------------------------------
    def _answer(self, message: mqtt.MQTTMessage, answer: dict[str, Any] | str) -> bool:
        """Publish an answer if one was asked for; False if paho would not take it now."""
        response = _prop(message, "ResponseTopic")
        if response is None or not self._response_allowed(response):
            return True
        props = Properties(PacketTypes.PUBLISH)
        correlation = _prop(message, "CorrelationData")
        if correlation is not None:
            props.CorrelationData = correlation
        payload = answer if isinstance(answer, str) else _dumps({"v": 1, **answer, "ts_ms": _now_ms()})
        try:
            mid = self.link.publish(response, payload, properties=props)
        except PacketTooLarge as exc:  # say so in an answer that fits, instead of losing the connection
            self._count("answers_too_large")
            cmd_id = answer.get("id") if isinstance(answer, dict) else json.loads(answer).get("id")
            mid = self.link.publish(response, _dumps({"v": 1, "id": cmd_id, "ok": False, "ts_ms": _now_ms(),
                                                      "error": _error("too_large", f"the answer is {exc}")}),
                                    properties=props)
        if mid is None:
            self._count("answers_lost")  # not acknowledged either: the broker delivers the command again
            return False
        self._count("answered")
        return True

    # -- the worker ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                job = self._take_waiting()
                if job is None:
                    try:
                        job = self._queue.get(timeout=0.2)
                    except queue.Empty:
                        continue
                try:
                    self._handle(job)
                except Exception:  # a bug in one command must not stop the others
                    self._count("failed")
                    log.exception("command handling failed")
                finally:
                    if job.message is not None and job.ack:
                        self.link.ack(job.message, job.connection)
        finally:
            if self._db is not None:
                self._db.conn.close()

    def _handle(self, job: _Job) -> None:
        if job.kind == "restore":
            self._publish_report(self.config.reported(self.config.restore_running()))
        elif job.kind == "report":
            self._publish_report(self.config.reported())
        elif job.kind == "desired":
            assert job.desired is not None
            outcome = self.config.apply_desired(job.desired.version, job.desired.config)
            if outcome is None:
                self._count("desired_ignored")
                return
            self._count("desired_applied" if outcome.ok else "desired_rejected")
            job.ack = self._publish_report(self.config.reported(outcome))
        else:
            self._command(job)

    def _publish_report(self, doc: dict[str, Any]) -> bool:
        """The retained config/reported document; False if paho would not take it now.

        Too large for the broker, it goes without the effective config (`get_config` has it)."""
        try:
            return self.link.publish(self.reported_topic, _dumps(doc), retain=True) is not None
        except PacketTooLarge as exc:
            doc = {k: v for k, v in doc.items() if k != "config"}
            doc["config_omitted"] = f"{exc}; ask with get_config"
            try:
                return self.link.publish(self.reported_topic, _dumps(doc), retain=True) is not None
            except PacketTooLarge:
                log.error("config/reported does not fit in the broker's maximum packet size even without the config")
                return True  # nothing more to do: acknowledge, or it comes back on every connect

    def _command(self, job: _Job) -> None:
        assert job.message is not None and job.envelope is not None and job.args is not None
        cmd_id = job.envelope.id
        kept = self._kept_answer(cmd_id)
        if kept is not None:
            self._count("duplicates")
            job.ack = self._answer(job.message, kept)
            return
        expires_at = job.envelope.expires_at
        if (job.deadline is not None and time.monotonic() > job.deadline) or \
                (expires_at is not None and _now_ms() > expires_at):
            self._count("expired")
            log.info("command %s (%s) expired before it could run; ignored", job.name, cmd_id)
            self._answer(job.message, {"id": cmd_id, "ok": False, "error": _error("expired", "expired; not run")})
            return
        try:
            answer = {"id": cmd_id, "ok": True, "result": self.commands.run(job.name, job.args)}
        except CommandError as exc:
            answer = {"id": cmd_id, "ok": False, "error": _error(exc.code, str(exc), exc.details)}
        except Exception as exc:
            self._count("failed")
            log.exception("command %s failed", job.name)
            answer = {"id": cmd_id, "ok": False, "error": _error("internal", f"{type(exc).__name__}: {exc}")}
        self._count("executed")
        payload = _dumps({"v": 1, **answer, "ts_ms": _now_ms()})
        if job.name not in self.commands.READ_ONLY:
            self._keep_answer(cmd_id, job.name, payload)
        job.ack = self._answer(job.message, payload)

    # -- kept answers (SQLite, bounded; in memory while the store's database is unavailable) ---------
    def _database(self) -> sqlite_utils.Database | None:
        if self._db is None:
            db = None
            try:
                db = connect(self._db_path)
                db.execute("SELECT count(*) FROM command_answers").fetchone()
                self._db = db
            except sqlite3.Error as exc:
                if db is not None:
                    db.conn.close()
                log.debug("kept command answers in memory: %s", exc)
        return self._db

    def _kept_answer(self, cmd_id: str) -> str | None:
        if cmd_id in self._answers_in_memory:
            return self._answers_in_memory[cmd_id]
        db = self._database()
        if db is None:
            return None
        try:
            row = db.execute("SELECT answer FROM command_answers WHERE id = ?", (cmd_id,)).fetchone()
        except sqlite3.Error as exc:
            log.error("cannot read kept command answers: %s", exc)
            return None
        return row[0] if row else None

    def _keep_answer(self, cmd_id: str, name: str, payload: str) -> None:
        db = self._database()
        if db is None:
            self._keep_in_memory(cmd_id, payload)
            return
        try:
            with transaction(db):
                db.execute("INSERT OR REPLACE INTO command_answers(id, name, answer, created_ms) "
                           "VALUES (?, ?, ?, ?)", (cmd_id, name, payload, _now_ms()))
                trimmed = db.execute(
                    "DELETE FROM command_answers WHERE id IN (SELECT id FROM command_answers "
                    "ORDER BY created_ms DESC LIMIT -1 OFFSET ?)", (KEPT_ANSWERS,)).rowcount
            self._count("answers_trimmed", max(0, trimmed))
        except sqlite3.Error as exc:  # e.g. a full disk: kept in memory, lost only if the agent restarts
            log.error("cannot store the answer of command %s (kept in memory): %s", cmd_id, exc)
            self._keep_in_memory(cmd_id, payload)

    def _keep_in_memory(self, cmd_id: str, payload: str) -> None:
        self._answers_in_memory[cmd_id] = payload
        while len(self._answers_in_memory) > KEPT_ANSWERS:
            self._answers_in_memory.popitem(last=False)
            self._count("answers_trimmed")


def _prop(message: mqtt.MQTTMessage, name: str) -> Any:
    props = getattr(message, "properties", None)
    return getattr(props, name, None) if props is not None else None


def _json(payload: bytes, limit: int) -> Any:
    if len(payload) > limit:
        raise _Refused("too_large", f"payload of {len(payload)} bytes; at most {limit}")
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Refused("bad_request", f"not JSON: {str(exc)[:200]}") from None


def _error(code: str, message: str, details: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        out["details"] = details
    return out


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)


def _now_ms() -> int:
    return int(time.time() * 1000)
