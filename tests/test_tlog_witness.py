"""The witness: a verifier that remembers the newest checkpoint and demands consistency with it
catches a log that rewrote, forked or dropped its history, even though every forged checkpoint
carries a valid signature by the log's key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tlog_support import ORIGIN, bundle

from tlog.log import SQLiteLog
from tlog.publish import publish_bundle, refresh_bundle
from verifier.errors import UnusableInput, VerificationError
from verifier.logentry import (
    LogEntry,
    load_witness_state,
    verify_log_entry,
    witness_update,
)
from verifier.models import Status, Verdict
from verifier.policy import LogPolicy


def _check(b: dict, key: str, state: Path) -> Verdict:
    v = Verdict("bundle")
    verify_log_entry(b, LogPolicy(key, True), v, str(state))
    return v


def _witness_step(v: Verdict):  # type: ignore[no-untyped-def]
    return next(s for s in v.steps if s.name == "log witness")


def test_honest_log_advances_the_witness(tmp_path: Path) -> None:
    state = tmp_path / "witness.json"
    with SQLiteLog(tmp_path / "log.db", origin=ORIGIN) as log:
        key = log.signer.verifier_key
        a = [publish_bundle(log, bundle(i)) for i in range(3)][-1]
        v = _check(a, key, state)
        assert v.verified and "trusted on first use" in _witness_step(v).reason
        assert load_witness_state(state, key).size == 3  # type: ignore[union-attr]

        b = [publish_bundle(log, bundle(i)) for i in range(3, 6)][-1]
        v = _check(b, key, state)
        assert not v.verified and "consistency proof from 3 to 6 is needed" in _witness_step(v).reason
        assert load_witness_state(state, key).size == 3  # type: ignore[union-attr]

        b = refresh_bundle(log, b, from_size=3)
        v = _check(b, key, state)
        assert v.verified and "extends the witnessed size 3" in _witness_step(v).reason
        assert load_witness_state(state, key).size == 6  # type: ignore[union-attr]

        v = _check(a, key, state)  # an older entry: must be brought up to the witness's size
        assert not v.verified and "--from-size 6" in _witness_step(v).reason
        a = refresh_bundle(log, a, from_size=6)
        assert LogEntry.from_json(a["logEntry"]).tree_size == 6
        assert _check(a, key, state).verified

        publish_bundle(log, bundle(6))
        older = refresh_bundle(log, a, tree_size=6)
        latest = LogEntry.from_json(refresh_bundle(log, a)["logEntry"])
        assert latest.tree_size == 7
        # An explicit proof from the entry's size up to the witness's also convinces it.
        proof = log.consistency_proof(6, 7)
        assert witness_update(state, latest.checkpoint, proof, key).advanced
        result = witness_update(state, older["logEntry"]["checkpoint"], proof, key)
        assert not result.advanced and "prefix of the witnessed size 7" in result.message


def _forked(tmp_path: Path, honest: SQLiteLog, name: str) -> SQLiteLog:
    """A second tree signed with the honest log's own key: what a compromised operator can make."""
    return SQLiteLog(tmp_path / f"{name}.db", signer=honest.signer)


def test_forged_history_is_rejected(tmp_path: Path) -> None:
    state = tmp_path / "witness.json"
    with SQLiteLog(tmp_path / "log.db", origin=ORIGIN) as honest:
        key = honest.signer.verifier_key
        seen = [publish_bundle(honest, bundle(i)) for i in range(5)][-1]
        assert _check(seen, key, state).verified          # the witness has seen size 5

        with _forked(tmp_path, honest, "rewritten") as forged:
            for i in range(5):                            # entry 2 rewritten, then 3 more
                publish_bundle(forged, bundle(i, "rewritten" if i == 2 else ""))
            for i in range(5, 8):
                publish_bundle(forged, bundle(i))
            x = publish_bundle(forged, bundle(8), from_size=5)   # a proof that is valid inside the fork
            v = _check(x, key, state)
            checkpoint_step = next(s for s in v.steps if s.name == "log checkpoint")
            assert checkpoint_step.status is Status.OK      # the signature is genuine...
            assert not v.verified                           # ...and still the witness refuses
            assert "NOT consistent" in _witness_step(v).reason
            assert "rewrote or dropped history" in _witness_step(v).reason

            for i in range(5, 9):                          # the honest log grows to the same size 9...
                publish_bundle(honest, bundle(i))
            honest_proof = honest.consistency_proof(5, 9)   # ...but its proof does not fit the fork's root
            with pytest.raises(VerificationError, match="NOT consistent"):
                witness_update(state, x["logEntry"]["checkpoint"], honest_proof, key)

        with _forked(tmp_path, honest, "split") as split:   # same size, different root
            y = [publish_bundle(split, bundle(i, "other")) for i in range(5)][-1]
            v = _check(y, key, state)
            assert not v.verified and "SPLIT VIEW" in _witness_step(v).reason

        with _forked(tmp_path, honest, "truncated") as truncated:   # history dropped
            z = [publish_bundle(truncated, bundle(i)) for i in range(3)][-1]
            v = _check(z, key, state)
            assert not v.verified and "consistency proof from 3 to 5 is needed" in _witness_step(v).reason
            with pytest.raises(Exception, match="dropped history"):
                refresh_bundle(truncated, z, from_size=5)

        assert load_witness_state(state, key).size == 5   # type: ignore[union-attr]  (never moved to a fork)


def test_witness_state_is_checked_not_trusted(tmp_path: Path) -> None:
    state = tmp_path / "witness.json"
    with SQLiteLog(tmp_path / "log.db", origin=ORIGIN) as log, \
            SQLiteLog(tmp_path / "other.db", origin="other.example/log") as other:
        key = log.signer.verifier_key
        b = publish_bundle(log, bundle(1))
        assert _check(b, key, state).verified
        saved = json.loads(state.read_text())
        assert set(saved) == {"origin", "size", "root", "note"} and saved["origin"] == ORIGIN

        c = publish_bundle(other, bundle(1))
        with pytest.raises(VerificationError, match="one state file per log"):
            witness_update(state, c["logEntry"]["checkpoint"], None, other.signer.verifier_key)

        state.write_text(json.dumps({**saved, "size": 0}))
        with pytest.raises(UnusableInput, match="do not match its signed note"):
            _check(b, key, state)
        state.write_text(json.dumps({**saved, "note": saved["note"].replace("\n1\n", "\n2\n")}))
        with pytest.raises(UnusableInput, match="damaged"):
            _check(b, key, state)
        state.write_text("{not json")
        with pytest.raises(UnusableInput, match="damaged"):
            _check(b, key, state)


def _unwritable_state_paths(tmp_path: Path) -> list[Path]:
    """State paths that do not exist yet (first use) and cannot be created; root ignores file
    modes, so no chmod here."""
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    paths = [tmp_path / "dangling" / "witness.json"]  # its directory is a link to nothing
    if Path("/proc").is_dir():
        paths.append(Path("/proc/x"))  # the reviewer's case: no file can be created in /proc
    return paths


def test_unreadable_or_unwritable_witness_state_is_unusable_input(tmp_path: Path) -> None:
    with SQLiteLog(tmp_path / "log.db", origin=ORIGIN) as log:
        key = log.signer.verifier_key
        b = publish_bundle(log, bundle(1))
        for state in _unwritable_state_paths(tmp_path):
            with pytest.raises(UnusableInput, match=re.escape(f"cannot write witness state {state}: ")):
                _check(b, key, state)
            assert not state.exists()
        (tmp_path / "a-file").write_text("")
        for state in (tmp_path / "a-file" / "witness.json", tmp_path / "a-dir"):
            (tmp_path / "a-dir").mkdir(exist_ok=True)
            with pytest.raises(UnusableInput, match=re.escape(f"cannot read witness state {state}: ")):
                _check(b, key, state)
