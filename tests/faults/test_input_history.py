"""Reading the history never fails because of one odd row.

Rows an older version (or a hand, or a bug) wrote that can't be decoded: a time out of
datetime's range, JSON that doesn't parse or has the wrong shape, an unknown status. They are
written straight into a real SQLite file with sqlite3 while no engine has it open, then read
back through the public API: every good run still reads normally, and each odd one comes back
as a Run showing the problem instead of raising for everyone.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from nbtasks import Engine, RunStatus

FAR = 6e12  # epoch seconds in the year 192,102: what `delay="9999999w"` used to store


def insert_like(db_path: Path, template_id: str, **changes: Any) -> None:
    """Copy an existing run row with some columns changed (the file's own schema)."""
    with closing(sqlite3.connect(db_path)) as conn, conn:
        cursor = conn.execute("SELECT * FROM runs WHERE id = ?", (template_id,))
        cols = [d[0] for d in cursor.description]
        row = dict(zip(cols, cursor.fetchone(), strict=True))
        row.update(owner="eng_gone", seq=0, **changes)
        conn.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))


POISON: dict[str, dict[str, Any]] = {
    "run_far_delay": {"status": "DELAYED", "delay_until": FAR, "finished_at": None},
    "run_far_created": {"created_at": FAR},
    "run_bad_payload": {"payload": "{not json"},
    "run_bad_output": {"output": '{"a": '},
    "run_tags_not_a_list": {"tags": '"just-a-string"'},
    "run_metadata_not_a_dict": {"metadata": "[1, 2]"},
}


@pytest.fixture
def poisoned(db_path: Path) -> tuple[Path, list[str]]:
    """A file with two good runs and one of each kind of odd row."""
    with Engine(store=str(db_path)) as eng:
        @eng.task(id="echo")
        async def echo(payload: Any, ctx: Any) -> Any:
            return payload

        good = [echo.trigger(n).id for n in (1, 2)]
        for run_id in good:
            assert eng.runs.retrieve(run_id) is not None
        echo.trigger(0).wait(timeout=10)
        good.append(eng.runs.list(limit=1)[0].id)
    for run_id, changes in POISON.items():
        insert_like(db_path, good[-1], id=run_id, **changes)
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE attempts SET started_at = ? WHERE run_id = ?", (FAR, good[0]))
    return db_path, good


def test_list_and_retrieve_show_odd_rows_instead_of_failing(
        poisoned: tuple[Path, list[str]]) -> None:
    db_path, good = poisoned
    with Engine(store=str(db_path)) as eng:
        runs = eng.runs.list(limit=100)
        assert len(runs) == len(good) + len(POISON)
        by_id = {r.id: r for r in runs}
        for run_id in good[1:]:
            assert by_id[run_id].error is None and by_id[run_id].is_success
        for run_id in POISON:
            run = by_id[run_id]
            assert run.error is not None and run.error["type"] == "UndecodableRow", run_id
            assert run.error["message"].startswith("undecodable row: ")
            assert eng.runs.retrieve(run_id).error == run.error

        far = eng.runs.retrieve("run_far_delay")
        assert far.delay_until is None and far.status is RunStatus.DELAYED
        assert "delay_until='6000000000000.0'" in far.error["message"]  # type: ignore[index]
        assert "seconds since 1970 is out of range for a date" in far.error["message"]  # type: ignore[index]
        assert far.payload == 0 and far.output == 0  # the rest of the row is kept

        created = eng.runs.retrieve("run_far_created")
        assert created.created_at.timestamp() == 0  # shown at the epoch, with the note
        assert "created_at" in created.error["message"]  # type: ignore[index]

        bad_payload = eng.runs.retrieve("run_bad_payload")
        assert bad_payload.payload is None and bad_payload.output == 0
        assert "payload='{not json'" in bad_payload.error["message"]  # type: ignore[index]
        assert eng.runs.retrieve("run_bad_output").output is None
        assert eng.runs.retrieve("run_tags_not_a_list").tags == []
        assert "tags: not a list" in by_id["run_tags_not_a_list"].error["message"]  # type: ignore[index]
        assert eng.runs.retrieve("run_metadata_not_a_dict").metadata == {}

        # A good run whose attempt row is odd: the run reads, the note says which part.
        first = eng.runs.retrieve(good[0])
        assert first.payload == 1 and first.attempts == []
        assert "attempt 1: 6000000000000.0 seconds since 1970 is out of range" in first.error["message"]  # type: ignore[index]
        # Filters still work over the odd rows.
        assert {r.id for r in eng.runs.list(status="DELAYED")} == {"run_far_delay"}

        # A status this version doesn't know, written by another process while the engine runs.
        insert_like(db_path, good[1], id="run_unknown_status", status="PAUSED_BY_A_NEWER_VERSION")
        unknown = eng.runs.retrieve("run_unknown_status")
        assert unknown.payload == 2 and unknown.error is not None
        assert "status='PAUSED_BY_A_NEWER_VERSION'" in unknown.error["message"]
        assert "run_unknown_status" in {r.id for r in eng.runs.list()}


def test_list_tokens_shows_odd_rows_instead_of_failing(db_path: Path) -> None:
    with Engine(store=str(db_path)) as eng:
        good = eng.wait.create_token(timeout="1h", tags=["ok"])
    now = time.time()
    with closing(sqlite3.connect(db_path)) as conn, conn:
        for token_id, timeout_at, tags in (("waitpoint_far", FAR, None),
                                           ("waitpoint_badtags", now + 60, "{oops")):
            conn.execute(
                "INSERT INTO waitpoints (id, run_id, kind, status, created_at, timeout_at, tags,"
                " owner) VALUES (?, NULL, 'token', 'WAITING', ?, ?, ?, 'eng_gone')",
                (token_id, now, timeout_at, tags))
    with Engine(store=str(db_path)) as eng:
        tokens = {t["id"]: t for t in eng.wait.list_tokens()}
        assert set(tokens) == {good.id, "waitpoint_far", "waitpoint_badtags"}
        assert "note" not in tokens[good.id] and tokens[good.id]["tags"] == ["ok"]
        assert tokens["waitpoint_far"]["timeout_at"] is None
        assert tokens["waitpoint_far"]["note"].startswith("undecodable row: timeout_at=")
        assert tokens["waitpoint_badtags"]["tags"] == []
        assert tokens["waitpoint_badtags"]["note"].startswith("undecodable row: tags: ")


def _orphan(db_path: Path, run_id: str, **changes: Any) -> None:
    """A non-final run of an engine that is gone, written straight into the file."""
    row = {"id": run_id, "task_id": "echo", "status": "QUEUED", "payload": "1",
           "attempt_count": 0, "created_at": time.time(), "updated_at": time.time(),
           "queued_at": time.time(), "tags": "[]", "metadata": "{}", "queue": "task/echo",
           "owner": "eng_gone", "seq": 1, "is_test": 0, "priority": 0.0}
    row.update(changes)
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))


UNREADABLE: dict[str, dict[str, Any]] = {
    "run_unknown_status": {"status": "BOGUS"},
    "run_tags_not_json": {"tags": "not json"},
    "run_seq_is_text": {"status": "EXECUTING", "attempt_count": 1, "seq": "x"},
    "run_count_is_real": {"attempt_count": 1.5},
    "run_metadata_is_a_list": {"metadata": "[1]"},
}


@pytest.mark.timeout(60)
def test_a_restart_ends_runs_it_cannot_read_and_resumes_the_rest(
        db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    Engine(store=str(db_path)).close()
    for run_id, changes in UNREADABLE.items():
        _orphan(db_path, run_id, **changes)
    _orphan(db_path, "run_fine", seq=9)
    with caplog.at_level("WARNING", logger="nbtasks"), Engine(store=str(db_path)) as eng:
        @eng.task(id="echo")
        async def echo(payload: Any, ctx: Any) -> Any:
            return payload

        assert eng.wait_results(["run_fine"], timeout=10)[0].ok
    warned = [r.getMessage() for r in caplog.records if "could not resume" in r.getMessage()]
    assert len(warned) == 1 and "run_unknown_status" in warned[0]
    with closing(sqlite3.connect(db_path)) as conn, conn:
        found = dict(conn.execute("SELECT id, status FROM runs").fetchall())
        errors = dict(conn.execute("SELECT id, error FROM runs WHERE error IS NOT NULL"))
    assert found == {"run_fine": "COMPLETED", **dict.fromkeys(UNREADABLE, "SYSTEM_FAILURE")}
    assert "'BOGUS' is not a valid RunStatus" in errors["run_unknown_status"]
    assert "seq is 'x', not a number" in errors["run_seq_is_text"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="nbtasks"), Engine(store=str(db_path)) as eng:
        assert eng.runs.retrieve("run_count_is_real").status is RunStatus.SYSTEM_FAILURE
    assert not [r for r in caplog.records if "could not resume" in r.getMessage()]


@pytest.mark.timeout(60)
def test_text_that_is_not_utf8_reads_as_replacement_characters(db_path: Path) -> None:
    with Engine(store=str(db_path)) as eng:
        @eng.task(id="echo")
        async def echo(payload: Any, ctx: Any) -> Any:
            return payload

        bad, good = echo.trigger("a").id, echo.trigger("b").id
        eng.wait_results([bad, good], timeout=10)
        with closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute("UPDATE runs SET output = CAST(X'22ff22' AS TEXT) WHERE id = ?", (bad,))
        listed = {r.id: r.output for r in eng.runs.list()}
        assert listed == {bad: "\ufffd", good: "b"}
        assert eng.runs.retrieve(bad).output == "\ufffd"
        assert eng.runs.retrieve(good).output == "b"


def test_odd_json_in_one_row_fails_no_filter_frame_or_dashboard_query(db_path: Path) -> None:
    """Text SQLite's JSON functions can't read (not JSON, or nested deeper than they go: an
    older version on Python 3.12+ could store such a payload) in one row's tags, error, payload
    or log attributes. Every filter that extracts from those columns, the DataFrames and the
    dashboard's queries used to fail whole ("malformed JSON", or a RecursionError decoding the
    payload); now the odd row reads as having no value there, and the others as before."""
    import pandas as pd

    from nbtasks.notebook import queries

    with Engine(store=str(db_path)) as eng:
        @eng.task(id="echo")
        async def echo(payload: Any, ctx: Any) -> Any:
            import nbtasks
            with nbtasks.logger.trace("step", rows=1):
                nbtasks.logger.info("hello", n=1)
            return payload

        good = echo.trigger(1, tags=["keep"])
        assert good.wait(timeout=10).ok
    deep = "[" * 3_000 + "]" * 3_000
    insert_like(db_path, good.id, id="run_tags_not_json", tags="not json")
    insert_like(db_path, good.id, id="run_error_not_json", status="FAILED", error="{bad")
    insert_like(db_path, good.id, id="run_deep_payload", payload=deep)
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE logs SET attributes = 'not json' WHERE run_id = ?", (good.id,))
        conn.execute("INSERT INTO schedules (id, task_id, type, cron, timezone, active, "
                     "created_at) VALUES ('sched_1', 'echo', 'IMPERATIVE', '0 0 1 1 *', 'UTC', 0, 0)")
    ids = {good.id, "run_tags_not_json", "run_error_not_json", "run_deep_payload"}
    with Engine(store=str(db_path)) as eng:
        assert {r.id for r in eng.runs.list()} == ids
        # Python 3.11's decoder stops before 3,000 levels (no payload, and a note); 3.13's reads it.
        deep_run = eng.runs.retrieve("run_deep_payload")
        assert deep_run.payload is None or deep_run.error is None
        assert {r.id for r in eng.runs.list(tag="keep")} == ids - {"run_tags_not_json"}
        frame = eng.runs.to_dataframe().set_index("id")
        assert set(frame.index) == ids
        assert frame.loc["run_tags_not_json", "tags"] == ()
        assert frame.loc[good.id, "tags"] == ("keep",)
        assert pd.isna(frame.loc["run_error_not_json", "error_type"])
        assert set(eng.runs.to_dataframe(tag="keep").id) == ids - {"run_tags_not_json"}
        assert eng.runs.spans_dataframe(run_id=good.id).empty  # its span lines are unreadable
        logs = eng.runs.logs(good.id)
        assert "hello" in logs.message.tolist() and all(a is None for a in logs.attributes)
        now = time.time()
        for query in (queries.RunQuery(schedule_id="sched_1"),
                      queries.RunQuery(tags=("keep",)),
                      queries.RunQuery(tags=("keep",), all_tags=True)):
            rows = queries.page(eng.store, query, now, limit=10)
            assert {r.id for r in rows} <= ids, query
        shown = {r.id: r.tags for r in queries.page(eng.store, queries.RunQuery(), now, limit=10)}
        assert shown["run_tags_not_json"] == () and shown[good.id] == ("keep",)
        assert [line.attributes for line in queries.logs(eng.store, good.id)] == [None]
