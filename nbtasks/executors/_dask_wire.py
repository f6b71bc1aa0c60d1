"""What a Dask worker tells the kernel on the scheduler's event topic: signed JSON, nothing else.

Any client of a Dask scheduler can post to any event topic, and read what is posted there. So
what the kernel reads from its topic is treated as hostile until proven otherwise:

- it is JSON only (never a pickle): reading it can't run code in the kernel;
- each batch is sealed with an HMAC under a secret that only this kernel's own tasks carry (it
  travels inside the submitted task, never on a topic), so a message posted by someone else is
  dropped;
- each batch carries its sender's id and a sequence number, so a batch read off the topic and
  posted again is dropped too.

Messages are batched: everything an attempt sends while the worker's event loop is busy goes up
as one event (see `Outbox`), so a chatty run costs one event per loop turn, not one per line.
Requests' arguments use `dumps_args`, a JSON with a few tagged types (datetimes and durations are
what trigger options carry); anything else raises in the caller, on the worker. A pool worker's
requests use the same encoding over its pipe.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

_TAG = "__nbtasks_type__"


def _strict(value: Any) -> Any:
    if isinstance(value, datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, timedelta):
        return {_TAG: "timedelta", "v": value.total_seconds()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    dump = getattr(value, "model_dump", None)  # pydantic options (QueueOptions, RetryOptions)
    if callable(dump):
        return dump(exclude_none=True)
    raise TypeError(f"{type(value).__name__} can't be sent to the kernel from a worker "
                    "(only JSON values, datetimes and timedeltas can)")


def _untag(obj: dict[str, Any]) -> Any:
    kind = obj.get(_TAG)
    if kind == "datetime" and isinstance(obj.get("v"), str):
        return datetime.fromisoformat(obj["v"])
    if kind == "timedelta" and isinstance(obj.get("v"), int | float):
        return timedelta(seconds=obj["v"])
    return obj


def dumps_args(args: tuple[Any, ...]) -> str:
    """A request's arguments as JSON; raises TypeError for what JSON can't say."""
    return json.dumps(args, default=_strict, ensure_ascii=False, separators=(",", ":"))


def loads_args(text: Any) -> tuple[Any, ...]:
    """The arguments `dumps_args` wrote; ValueError for anything else."""
    if not isinstance(text, str):
        raise ValueError("request arguments must be a JSON string")
    value = json.loads(text, object_hook=_untag)
    if not isinstance(value, list):
        raise ValueError("request arguments must be a JSON list")
    return tuple(value)


def dumps_message(message: tuple[Any, ...]) -> str:
    """A one-way message (log line, metadata, tags) as JSON. A value JSON can't hold becomes its
    str(), as log attributes do in the kernel: a log line must never fail the run."""
    return json.dumps(message, default=str, ensure_ascii=False, separators=(",", ":"))


def mac(secret: bytes, body: str) -> str:
    return hmac.new(secret, body.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


class Outbox:
    """One worker process's batches for one kernel (topic): messages in order, one event per
    turn of the worker's event loop. Thread-safe: sync bodies send from their own threads."""

    def __init__(self, topic: str, secret: bytes,
                 post: Callable[[str, Any], None], later: Callable[[Callable[[], None]], None]
                 ) -> None:
        self.topic = topic
        self.secret = secret
        self.source = os.urandom(8).hex()
        self._post = post  # Worker.log_event
        self._later = later  # run on the worker's event loop
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._seq = 0

    def send(self, message: str) -> None:
        with self._lock:
            self._parts.append(message)
            first = len(self._parts) == 1
        if first:
            self._later(self.flush)

    def flush(self) -> None:
        with self._lock:
            parts, self._parts = self._parts, []
            if not parts:
                return
            self._seq += 1
            body = f'{{"src":"{self.source}","seq":{self._seq},"msgs":[{",".join(parts)}]}}'
        self._post(self.topic, [body, mac(self.secret, body)])


class Inbox:
    """The kernel's side: opens an event, or says None for anything it didn't seal itself."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self._last: dict[str, int] = {}  # sender -> last sequence number seen

    def open(self, event: Any) -> list[list[Any]] | None:
        if not (isinstance(event, list | tuple) and len(event) == 2
                and isinstance(event[0], str) and isinstance(event[1], str)):
            return None
        body, seal = event
        if not hmac.compare_digest(mac(self.secret, body), seal):
            return None
        try:
            batch = json.loads(body)
        except ValueError:
            return None
        source, seq, msgs = batch.get("src"), batch.get("seq"), batch.get("msgs")
        if not (isinstance(source, str) and isinstance(seq, int) and isinstance(msgs, list)):
            return None
        if seq <= self._last.get(source, 0):
            return None  # a replay
        self._last[source] = seq
        return [m for m in msgs if isinstance(m, list) and len(m) >= 2
                and isinstance(m[0], str) and isinstance(m[1], str)]
