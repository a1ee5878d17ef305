"""`aaudit log` on a --db that is no log, a damaged log, and addresses or timeouts that cannot work:
a one-line message and exit 2 (or 1 for a damaged log), never a traceback, and nothing written
beside a file that is not a log."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from aaudit.cli import main
from tlog.log import SQLiteLog
from tests.tlog_support import ORIGIN, bundle
from verifier.models import log_entry_bytes


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return rc, err


def _not_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "junk.db"
    path.write_bytes(os.urandom(3000))
    return path


def _other_programs_db(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    return path


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.mark.parametrize("command", [["log", "serve", "--listen", "127.0.0.1:0"], ["log", "audit"]])
@pytest.mark.parametrize("make", [_not_sqlite, _other_programs_db, lambda tmp: tmp])
def test_a_db_that_is_no_log_is_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              command: list[str], make) -> None:  # noqa: ANN001
    db = make(tmp_path)
    before = db.read_bytes() if db.is_file() else None
    key = Path(f"{db}.key")
    if command[1] == "audit":  # with the key present, so the database itself is what is refused
        SQLiteLog(tmp_path / "real.db", origin=ORIGIN).close()
        os.replace(tmp_path / "real.db.key", key)
    rc, err = _run(capsys, *command, "--db", str(db))
    assert rc == 2
    assert "not a log database" in err or "not an aaudit log" in err or "not a file" in err, err
    if before is not None:
        assert db.read_bytes() == before  # no tables of ours added to another program's database
    if command[1] == "serve":
        assert not key.exists()  # no log key made beside a file that is no log


def test_another_programs_database_keeps_its_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _other_programs_db(tmp_path)
    assert _run(capsys, "log", "serve", "--db", str(db), "--listen", "127.0.0.1:0")[0] == 2
    assert _tables(db) == {"users"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_db_is_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "log.db"
    SQLiteLog(db, origin=ORIGIN).close()
    db.chmod(0)
    assert _run(capsys, "log", "audit", "--db", str(db))[0] == 2


def test_a_damaged_note_fails_the_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bytes that are not UTF-8 where a checkpoint note belongs: sqlite3 raises while reading."""
    db = tmp_path / "log.db"
    with SQLiteLog(db, origin=ORIGIN) as log:
        log.append(log_entry_bytes(bundle(1)))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE checkpoints SET note = CAST(X'ff00fe' AS TEXT) WHERE size = 1")
    rc, err = _run(capsys, "log", "audit", "--db", str(db))
    assert rc == 1 and "cannot be read" in err, err


def test_a_bad_listen_address_is_refused_before_anything_is_made(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for listen in ("bogus", "127.0.0.1:99999", "127.0.0.1:x", ":80", "", "[::1", "::1:80", "a b:1"):
        with pytest.raises(SystemExit) as exc:
            main(["log", "serve", "--db", str(tmp_path / "new.db"), "--listen", listen])
        assert exc.value.code == 2
        assert "HOST:PORT" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-1", "1e300", "soon"])
def test_a_timeout_that_cannot_work_is_refused(timeout: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["log", "checkpoint", "--log", "127.0.0.1:1", "--timeout", timeout])
    assert exc.value.code == 2 and "--timeout" in capsys.readouterr().err


def test_a_deeply_nested_bundle_is_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bundle.json"
    path.write_bytes(b"[" * 50_000 + b"]" * 50_000)
    for argv in (["publish", str(path)], ["prove", "0", "--bundle", str(path)]):
        rc, err = _run(capsys, "log", *argv, "--log", "127.0.0.1:1")
        assert rc == 2 and "nested too deeply" in err, err
