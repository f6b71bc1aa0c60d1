"""Scheduled tasks on the manual clock: declarative and imperative schedules, DST, restarts."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nbtasks import ConfigurationError, Engine
from nbtasks._schedules import ScheduledPayload
from nbtasks.testing import ManualClock

JAN1 = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday


def _at(day: int, hour: int, minute: int = 0, month: int = 1) -> str:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC).isoformat()


def echo(payload: ScheduledPayload, ctx: Any) -> dict[str, Any]:
    """A scheduled body that returns what it was given, as JSON."""
    return payload.model_dump(mode="json")


def echo_dict(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A plain task on an imperative schedule gets the payload as JSON."""
    return payload


def outputs(eng: Engine, task_id: str) -> list[dict[str, Any]]:
    """The outputs of the task's runs, oldest first, once they have all finished."""
    runs = list(reversed(eng.runs.list(task_id=task_id, limit=1000)))
    return [r.output for r in eng.wait_results([r.id for r in runs], timeout=10)]


def test_declarative_schedule_fires_on_weekdays(clocked: Engine, clock: ManualClock) -> None:
    clocked.schedules.task(id="weekday", cron="0 9 * * 1-5", run=echo)
    (sched,) = clocked.schedules.list()
    assert (sched.task, sched.type, sched.cron, sched.timezone) == \
        ("weekday", "DECLARATIVE", "0 9 * * 1-5", "UTC")
    assert sched.next_run == datetime(2026, 1, 1, 9, tzinfo=UTC)
    clock.advance(9 * 3600 - 1)
    assert outputs(clocked, "weekday") == []
    clock.advance(1)
    (first,) = outputs(clocked, "weekday")
    assert first["timestamp"] == _at(1, 9).replace("+00:00", "Z")
    assert first["last_timestamp"] is None
    assert first["schedule_id"] == sched.id and first["schedule_id"].startswith("sched_")
    assert (first["type"], first["timezone"], first["external_id"]) == \
        ("DECLARATIVE", "UTC", None)
    upcoming = [datetime.fromisoformat(u) for u in first["upcoming"]]
    assert len(upcoming) == 10
    assert upcoming[:3] == [datetime(2026, 1, d, 9, tzinfo=UTC) for d in (2, 5, 6)]  # no weekend
    clock.advance(5 * 86400)  # Fri, Sat, Sun, Mon, Tue
    got = outputs(clocked, "weekday")
    assert [o["timestamp"][:10] for o in got] == \
        ["2026-01-01", "2026-01-02", "2026-01-05", "2026-01-06"]
    assert got[2]["last_timestamp"] == got[1]["timestamp"]


def test_timezone_follows_daylight_saving(db_path: Path) -> None:
    clock = ManualClock(datetime(2026, 3, 27, 12, tzinfo=UTC))
    with Engine(store=str(db_path), clock=clock) as eng:
        eng.schedules.task(id="london-9am", run=echo,
                           cron={"pattern": "0 9 * * *", "timezone": "Europe/London"})
        eng.schedules.task(id="london-0130", run=echo,
                           cron={"pattern": "30 1 * * *", "timezone": "Europe/London"})
        clock.advance(3 * 86400)
        nine = [o["timestamp"] for o in outputs(eng, "london-9am")]
        # 09:00 GMT is 09:00 UTC; from Sunday 29 March, 09:00 BST is 08:00 UTC.
        assert nine == ["2026-03-28T09:00:00Z", "2026-03-29T08:00:00Z", "2026-03-30T08:00:00Z"]
        assert outputs(eng, "london-9am")[0]["timezone"] == "Europe/London"
        # 01:30 does not exist on the 29th: it fires at 02:00 BST, the end of the gap.
        early = [o["timestamp"] for o in outputs(eng, "london-0130")]
        assert early == ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        # Clocks go back on 25 October: 01:30 happens twice there and fires once.
        clock.set(datetime(2026, 10, 24, 12, tzinfo=UTC))
        before = len(outputs(eng, "london-0130"))
        clock.advance(2 * 86400)
        late = [o["timestamp"] for o in outputs(eng, "london-0130")][before:]
        assert late == ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]


@pytest.mark.parametrize("cron", [
    "61 * * * *", "* * * *", "0 9 * * * *", "every day", 42, None,
    {"pattern": "0 9 * * *", "timezone": "Mars/Olympus"}, {"pattern": "0 9 * * *", "tz": "UTC"},
    {"timezone": "UTC"}, {"pattern": "0 9 * * *", "timezone": 3},
])
def test_bad_cron_or_timezone_records_nothing(clocked: Engine, cron: Any) -> None:
    with pytest.raises(ConfigurationError):
        clocked.schedules.task(id="bad", cron=cron, run=echo)
    with pytest.raises(ConfigurationError):
        clocked.schedules.task(id="bad", cron=cron)(echo)
    assert clocked.registry.get("bad") is None
    assert clocked.schedules.list() == []


def test_imperative_schedules(clocked: Engine, clock: ManualClock) -> None:
    report = clocked.task(id="report", run=echo_dict)
    made = clocked.schedules.create(task=report, cron="0 * * * *", deduplication_key="k1",
                                    external_id="user-7")
    again = clocked.schedules.create(task="report", cron="30 * * * *", deduplication_key="k1",
                                     external_id="user-7", timezone="Asia/Tokyo")
    assert again.id == made.id and again.cron == "30 * * * *"
    assert again.timezone == "Asia/Tokyo" and again.deduplication_key == "k1"
    other = clocked.schedules.create(task="report", cron="0 0 * * *", deduplication_key="k2")
    assert [s.id for s in clocked.schedules.list()] == [made.id, other.id]
    assert clocked.schedules.list(active=False) == []
    assert clocked.schedules.retrieve(made.id).external_id == "user-7"
    clock.advance(1800)
    (tick,) = outputs(clocked, "report")
    assert (tick["type"], tick["external_id"]) == ("IMPERATIVE", "user-7")
    assert tick["timestamp"] == "2026-01-01T00:30:00Z"
    assert clocked.schedules.deactivate(made.id).active is False
    assert clocked.schedules.retrieve(made.id).next_run is None
    clock.advance(3 * 3600)
    assert len(outputs(clocked, "report")) == 1
    assert clocked.schedules.activate(made.id).active is True
    updated = clocked.schedules.update(made.id, cron="15 * * * *")
    assert updated.cron == "15 * * * *" and updated.timezone == "Asia/Tokyo"
    assert updated.external_id == "user-7"
    clock.advance(3600)
    assert [o["timestamp"][11:16] for o in outputs(clocked, "report")] == ["00:30", "04:15"]
    clocked.schedules.delete(made.id)
    with pytest.raises(ConfigurationError):
        clocked.schedules.retrieve(made.id)
    clock.advance(3600)
    assert len(outputs(clocked, "report")) == 2
    assert [s.id for s in clocked.schedules.list()] == [other.id]
    assert "Europe/London" in clocked.schedules.timezones()


def test_imperative_bad_input_records_nothing(clocked: Engine) -> None:
    clocked.task(id="report", run=echo_dict)
    bad: list[dict[str, Any]] = [
        {"task": "nobody", "cron": "0 * * * *", "deduplication_key": "k"},
        {"task": "report", "cron": "0 * * *", "deduplication_key": "k"},
        {"task": "report", "cron": "0 * * * *", "deduplication_key": "k", "timezone": "Nowhere"},
        {"task": "report", "cron": "0 * * * *", "deduplication_key": ""},
        {"task": "report", "cron": "0 * * * *", "deduplication_key": "k", "external_id": 5},
    ]
    for kwargs in bad:
        with pytest.raises(ConfigurationError):
            clocked.schedules.create(**kwargs)
    assert clocked.schedules.list() == []
    with pytest.raises(ConfigurationError):
        clocked.schedules.retrieve("sched_missing")


def test_declarative_schedules_change_with_their_cell(clocked: Engine,
                                                      clock: ManualClock) -> None:
    first = clocked.schedules.task(id="cell", cron="0 * * * *", run=echo)
    (sched,) = clocked.schedules.list()
    with pytest.raises(ConfigurationError):
        clocked.schedules.update(sched.id, cron="5 * * * *")
    with pytest.raises(ConfigurationError):
        clocked.schedules.delete(sched.id)
    clocked.schedules.task(id="cell", cron="30 * * * *", run=echo)  # the cell, edited
    (same,) = clocked.schedules.list()
    assert same.id == sched.id and same.cron == "30 * * * *"
    clock.advance(3600)
    assert [o["timestamp"][11:16] for o in outputs(clocked, "cell")] == ["00:30"]
    clocked.task(id="cell", run=echo_dict)  # the cell without cron: the schedule goes
    assert clocked.schedules.list() == []
    clock.advance(3600)
    assert len(outputs(clocked, "cell")) == 1
    assert first.id == "cell"


def test_schedules_persist_and_missed_ticks_are_not_back_filled(db_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    clock = ManualClock(t0)
    with Engine(store=str(db_path), clock=clock) as eng:
        eng.task(id="hourly", run=echo_dict)
        made = eng.schedules.create(task="hourly", cron="0 * * * *", deduplication_key="h")
        clock.advance(3600)
        assert len(outputs(eng, "hourly")) == 1
    # The kernel is down for five hours; a new one starts at 06:30.
    later = ManualClock(t0 + timedelta(hours=6, minutes=30))
    with Engine(store=str(db_path), clock=later) as eng:
        assert eng.schedules.retrieve(made.id).next_run == t0 + timedelta(hours=7)
        eng.task(id="hourly", run=echo_dict)
        later.advance(1800)
        got = outputs(eng, "hourly")
        assert [o["timestamp"] for o in got] == ["2026-01-01T01:00:00Z", "2026-01-01T07:00:00Z"]
        assert got[1]["last_timestamp"] == "2026-01-01T01:00:00Z"


def test_two_kernels_run_a_tick_once(db_path: Path) -> None:
    clock_a, clock_b = ManualClock(JAN1), ManualClock(JAN1)
    with Engine(store=str(db_path), clock=clock_a) as a, \
            Engine(store=str(db_path), clock=clock_b) as b:
        a.task(id="tick", run=echo_dict)
        b.task(id="tick", run=echo_dict)
        a.schedules.create(task="tick", cron="0 * * * *", deduplication_key="t")
        b.schedule_book.restore()  # b learns of it as a kernel started later would
        clock_b.advance(3600)
        clock_a.advance(3600)
        clock_a.advance(3600)
        clock_b.advance(3600)
        a.runs._fresh()
        b.runs._fresh()
        rows = a.store.select("SELECT id, owner, payload FROM runs ORDER BY created_at")[1]
        assert [r[1] for r in rows] == [b.owner, a.owner]  # one tick each, none twice
        for eng, (run_id, _, _) in zip((b, a), rows, strict=True):
            assert eng.wait_result(run_id, timeout=10).ok
        assert [json.loads(r[2])["timestamp"][11:16] for r in rows] == ["01:00", "02:00"]


def test_a_test_trigger_needs_no_payload(clocked: Engine) -> None:
    task = clocked.schedules.task(id="manual", cron="0 0 1 1 *", run=echo)
    out = task.trigger({}).wait(timeout=10).output
    assert out["schedule_id"] == "sched_1234" and out["upcoming"] == []


def test_payload_reads_like_the_json_the_dashboard_shows(clocked: Engine, clock: ManualClock) -> None:
    """Item access, `.get`, `keys` and `in` work as on the dict the dashboard shows."""

    def by_key(payload: ScheduledPayload, ctx: Any) -> dict[str, Any]:
        assert payload["timestamp"] is payload.timestamp
        assert "upcoming" in payload and "nope" not in payload
        with pytest.raises(KeyError, match="'nope': a scheduled payload has only timestamp"):
            payload["nope"]
        return {"hour": payload["timestamp"].hour, "tz": payload.get("timezone"),
                "missing": payload.get("nope", "default"), "keys": payload.keys(),
                "as_dict": sorted(dict(payload)), "items": len(payload.items()),
                "values": len(payload.values())}

    clocked.schedules.task(id="by-key", cron="0 9 * * *", run=by_key, retry=None)
    clock.advance(9 * 3600)
    (run,) = clocked.runs.list(task_id="by-key")
    result = clocked.wait_result(run.id, timeout=10)
    assert result.ok, result.error
    fields = ["timestamp", "last_timestamp", "timezone", "schedule_id", "external_id", "type",
              "upcoming"]
    assert result.output == {"hour": 9, "tz": "UTC", "missing": "default", "keys": fields,
                             "as_dict": sorted(fields), "items": 7, "values": 7}
    # The dashboard shows the stored payload: a JSON object with the same keys.
    from nbtasks.notebook.display import pretty_json

    stored = clocked.runs.retrieve(run.id).payload
    assert list(json.loads(html.unescape(pretty_json(stored)))) == fields
    assert stored["timestamp"] == _at(1, 9).replace("+00:00", "Z")
