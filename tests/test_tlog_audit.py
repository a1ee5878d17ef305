"""`aaudit log audit` re-derives the stored tree and names the first row that disagrees."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tlog_support import ORIGIN

from aaudit.cli import main
from tlog.audit import audit
from tlog.log import SQLiteLog
from tlog.store import node_key
from verifier.errors import VerificationError


def _build(db: Path) -> str:
    with SQLiteLog(db, origin=ORIGIN) as log:
        for i in range(10):
            log.append(f"entry {i}".encode())
        log.append_many([f"bulk {i}".encode() for i in range(27)])
        return log.signer.verifier_key


def _sql(db: Path, statement: str, *args: object) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(statement, args)
    conn.close()


def test_audit_passes_on_an_intact_log_and_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "log.db"
    key = _build(db)
    report = audit(db, key)
    assert (report.size, report.checkpoints) == (37, 12)   # empty tree + 10 single appends + 1 batch
    assert report.nodes == 37 + 18 + 9 + 4 + 2 + 1
    assert main(["log", "audit", "--db", str(db)]) == 0
    assert "37 entries" in capsys.readouterr().out


@pytest.mark.parametrize("tamper,reason", [
    (("UPDATE entries SET data = ? WHERE idx = 5", b"entry X"), "entry 5: its stored leaf hash differs"),
    (("UPDATE nodes SET hash = ? WHERE id = ?", b"\x00" * 32, node_key((2, 3))), "tree node (level 2, index 3) differs"),
    (("DELETE FROM nodes WHERE id = ?", node_key((1, 4))), "tree node (level 1, index 4) is missing"),
    (("INSERT INTO nodes VALUES (?, ?)", node_key((9, 0)), b"\x01" * 32), "extra rows"),
    (("DELETE FROM entries WHERE idx = 36",), "checkpoint of size 37 is stored, but only 36"),
    (("UPDATE checkpoints SET note = replace(note, '=' || char(10) || char(10), '=' || char(10) || 'x' || char(10) "
      "|| char(10)) WHERE size = 10",), "checkpoint of size 10: checkpoint signature"),
    (("UPDATE checkpoints SET note = (SELECT note FROM checkpoints WHERE size = 9) WHERE size = 10",),
     "checkpoint stored under size 10 says size 9"),
])
def test_audit_names_the_tampered_row(tmp_path: Path, tamper: tuple, reason: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "log.db"
    key = _build(db)
    _sql(db, *tamper)
    with pytest.raises(VerificationError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        audit(db, key)
    assert main(["log", "audit", "--db", str(db), "--log-key", key]) == 1
    assert reason.split(":")[0] in capsys.readouterr().err


def test_audit_with_the_wrong_key_fails(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    _build(db)
    other = _build(tmp_path / "other.db")
    with pytest.raises(VerificationError, match="not signed by the trusted log key"):
        audit(db, other)
