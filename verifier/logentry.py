"""A bundle's transparency-log entry: its JSON form, its offline check, and the witness.

`aaudit log publish` appends `log_entry_bytes(bundle)` to the log and stores under "logEntry":

    {"origin": "<log origin>", "index": 7, "treeSize": 9,
     "inclusionProof": ["<base64 hash>", ...],        # RFC 9162 path of leaf_hash(entry bytes)
     "checkpoint": "<signed note>",                    # c2sp.org/tlog-checkpoint of treeSize
     "logKey": "<verifier key>",                       # optional, informational only
     "consistencyProof": {"fromSize": 3, "hashes": [...]}}   # optional: tree(3) is a prefix of tree(9)

`check_log_entry` checks the same entry for any logged record (the gateway's receipt batches too).
Inclusion proves the log committed to this exact bundle, under a checkpoint signed by the key in
the verifier's policy. It cannot prove the log shows everyone the same tree: for that a witness
keeps the newest checkpoint it has seen (a small JSON file) and demands that every later one
extends it (consistency). A log that rewrote or dropped history cannot produce that proof.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verifier.checkpoint import (
    NoteVerifier,
    parse_checkpoint,
    parse_note,
    parse_verifier_key,
    verify_checkpoint,
)
from verifier.errors import (
    AAuditError,
    ParseError,
    PolicyError,
    UnusableInput,
    VerificationError,
)
from verifier.inputs import load_json
from verifier.merkle import HASH_SIZE, leaf_hash, verify_consistency, verify_inclusion
from verifier.models import LOG_ENTRY_KEY, Verdict, b64d, b64e, log_entry_bytes

if TYPE_CHECKING:
    from verifier.policy import LogPolicy

MAX_PROOF_HASHES = 64  # below 2^63 leaves: inclusion proofs have at most 63 hashes, consistency proofs 64
_ENTRY_KEYS = {"origin", "index", "treeSize", "inclusionProof", "checkpoint", "logKey", "consistencyProof"}


@dataclass(frozen=True)
class InclusionProof:
    index: int
    tree_size: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True)
class ConsistencyProof:
    """Proof that the tree of `first` leaves is a prefix of the tree of `second` leaves."""

    first: int
    second: int
    hashes: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"fromSize": self.first, "toSize": self.second, "hashes": [b64e(h) for h in self.hashes]}


@dataclass(frozen=True)
class LogEntry:
    """The "logEntry" member of a bundle, parsed (not yet verified)."""

    origin: str
    index: int
    tree_size: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: str
    log_key: str | None = None
    consistency: ConsistencyProof | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"origin": self.origin, "index": self.index, "treeSize": self.tree_size,
                               "inclusionProof": [b64e(h) for h in self.inclusion_proof],
                               "checkpoint": self.checkpoint}
        if self.log_key is not None:
            out["logKey"] = self.log_key
        if self.consistency is not None:
            out["consistencyProof"] = self.consistency.to_json()
        return out

    @classmethod
    def from_json(cls, obj: Any, what: str = "logEntry") -> "LogEntry":
        if not isinstance(obj, dict):
            raise ParseError(f"{what}: expected an object")
        unknown = set(obj) - _ENTRY_KEYS
        if unknown:
            raise ParseError(f"{what}: unknown key(s) {', '.join(sorted(unknown))}")
        origin = obj.get("origin")
        if not isinstance(origin, str) or not origin:
            raise ParseError(f"{what}.origin: expected the log's origin string")
        index = _uint(obj.get("index"), f"{what}.index")
        size = _uint(obj.get("treeSize"), f"{what}.treeSize")
        if index >= size:
            raise ParseError(f"{what}: index {index} is not inside treeSize {size}")
        note = obj.get("checkpoint")
        if not isinstance(note, str):
            raise ParseError(f"{what}.checkpoint: expected the signed checkpoint note as a string")
        log_key = obj.get("logKey")
        if log_key is not None and not isinstance(log_key, str):
            raise ParseError(f"{what}.logKey: expected a verifier key string")
        consistency = None
        if "consistencyProof" in obj:
            consistency = parse_consistency_json(obj["consistencyProof"], size, f"{what}.consistencyProof")
        return cls(origin, index, size, _hashes(obj.get("inclusionProof"), f"{what}.inclusionProof"),
                   note, log_key, consistency)


def parse_consistency_json(obj: Any, tree_size: int, what: str = "consistencyProof") -> ConsistencyProof:
    """{"fromSize", "toSize"?, "hashes"}; toSize defaults to the entry's treeSize."""
    if not isinstance(obj, dict) or set(obj) - {"fromSize", "toSize", "hashes"}:
        raise ParseError(f"{what}: expected an object with fromSize, hashes and optionally toSize")
    first = _uint(obj.get("fromSize"), f"{what}.fromSize")
    second = _uint(obj["toSize"], f"{what}.toSize") if "toSize" in obj else tree_size
    if first > second:
        raise ParseError(f"{what}: fromSize {first} is larger than toSize {second}")
    return ConsistencyProof(first, second, _hashes(obj.get("hashes"), f"{what}.hashes"))


def _uint(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise ParseError(f"{what}: expected a non-negative integer")
    return value


def _hashes(value: Any, what: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > MAX_PROOF_HASHES:
        raise ParseError(f"{what}: expected a list of at most {MAX_PROOF_HASHES} base64 hashes")
    out = tuple(b64d(h, f"{what}[{i}]") for i, h in enumerate(value))
    bad = next((i for i, h in enumerate(out) if len(h) != HASH_SIZE), None)
    if bad is not None:
        raise ParseError(f"{what}[{bad}]: expected a {HASH_SIZE}-byte hash, got {len(out[bad])} bytes")
    return out


# ---------------------------------------------------------------------------------------------
# The witness: remember the newest checkpoint, demand that every later one extends it.


@dataclass(frozen=True)
class WitnessState:
    origin: str
    size: int
    root: bytes
    note: str

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "size": self.size, "root": b64e(self.root), "note": self.note}


@dataclass(frozen=True)
class WitnessResult:
    advanced: bool   # the state now holds the new checkpoint
    message: str


def load_witness_state(path: str | os.PathLike[str],
                       log_key: str | NoteVerifier | None = None) -> WitnessState | None:
    """The remembered checkpoint, or None before the first one. With `log_key`, the stored note is
    re-verified, so a damaged or hand-edited state file is caught instead of trusted."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnusableInput(f"cannot read witness state {p}: {exc.strerror or exc}") from None
    state = _parse_state(p, raw)
    if log_key is not None:
        verifier = parse_verifier_key(log_key) if isinstance(log_key, str) else log_key
        if state.origin != verifier.name:
            raise VerificationError(f"witness state {p} follows log {state.origin!r}, not {verifier.name!r}; "
                                    "use one state file per log")
        try:
            verify_checkpoint(state.note, verifier)
        except VerificationError as exc:
            raise _damaged(p, str(exc)) from None
    return state


def _parse_state(p: Path, raw: bytes) -> WitnessState:
    try:
        obj = load_json(raw, "witness state")
        if not isinstance(obj, dict) or set(obj) != {"origin", "size", "root", "note"}:
            raise ParseError("expected an object with origin, size, root and note")
        if not isinstance(obj["origin"], str) or not isinstance(obj["note"], str):
            raise ParseError("origin and note must be strings")
        state = WitnessState(obj["origin"], _uint(obj["size"], "size"), b64d(obj["root"], "root"), obj["note"])
        cp = parse_checkpoint(parse_note(state.note).text)
    except (ValueError, AAuditError) as exc:
        raise _damaged(p, str(exc)) from None
    if (cp.origin, cp.size, cp.root) != (state.origin, state.size, state.root):
        raise _damaged(p, "its fields do not match its signed note")
    return state


def _damaged(p: Path, why: str) -> UnusableInput:
    return UnusableInput(f"witness state {p} is damaged ({why}); restore it from a backup — deleting it "
                         "restarts trust-on-first-use and forgets what this witness has seen")


def _write_state(path: Path, state: WitnessState) -> None:
    """Atomic replace, so a crash leaves either the old or the new state, never a torn file.
    A state that cannot be written is unusable input: the witness must not silently forget."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state.to_json(), f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UnusableInput(f"cannot write witness state {path}: {exc.strerror or exc}") from None
        raise


def witness_update(state_path: str | os.PathLike[str], checkpoint_note: str,
                   consistency_proof: ConsistencyProof | None, log_key: str | NoteVerifier) -> WitnessResult:
    """Check a signed checkpoint against the witness's remembered one and remember the newer.

    Raises VerificationError when the checkpoint is not signed by `log_key`, when the log signed
    two different roots for one size (a split view), or when the new checkpoint is not proven to
    extend the remembered one (`consistency_proof` must connect the two sizes). The first
    checkpoint ever seen is trusted on first use.
    """
    path = Path(state_path)
    cp = verify_checkpoint(checkpoint_note, log_key)
    old = load_witness_state(path, log_key)
    new = WitnessState(cp.origin, cp.size, cp.root, checkpoint_note)
    if old is None:
        _write_state(path, new)
        return WitnessResult(True, f"first checkpoint of {cp.origin} seen by this witness (size {cp.size}); "
                             "trusted on first use")
    if cp.size == old.size:
        if cp.root != old.root:
            raise VerificationError(f"SPLIT VIEW: the log signed two different roots for size {cp.size} "
                                    f"({b64e(old.root)} seen before, {b64e(cp.root)} now)")
        return WitnessResult(False, f"same checkpoint as last seen (size {cp.size})")
    lo, hi = sorted((old, new), key=lambda s: s.size)
    if consistency_proof is None or (consistency_proof.first, consistency_proof.second) != (lo.size, hi.size):
        have = "none" if consistency_proof is None else \
            f"one from {consistency_proof.first} to {consistency_proof.second}"
        raise VerificationError(
            f"the witness last saw size {old.size}, this checkpoint has size {cp.size}: a consistency proof "
            f"from {lo.size} to {hi.size} is needed ({have} given); refresh the entry with "
            f"`aaudit log prove --bundle BUNDLE.json --from-size {old.size} --log HOST:PORT`")
    if not verify_consistency(lo.size, hi.size, consistency_proof.hashes, lo.root, hi.root):
        raise VerificationError(f"checkpoint of size {hi.size} is NOT consistent with the one of size {lo.size}: "
                                "the log rewrote or dropped history (or the proof is corrupt)")
    if cp.size > old.size:
        _write_state(path, new)
        return WitnessResult(True, f"size {cp.size} extends the witnessed size {old.size}; remembered")
    return WitnessResult(False, f"size {cp.size} is a prefix of the witnessed size {old.size}")


# ---------------------------------------------------------------------------------------------
# The check of a log entry: a bundle's, or any other record's.


def policy_log_key(log_policy: "LogPolicy") -> NoteVerifier:
    try:
        return parse_verifier_key(log_policy.public_key)
    except ParseError as exc:
        raise PolicyError(f"[log] public_key: {exc}") from None


def verify_log_entry(bundle: dict[str, Any], log_policy: "LogPolicy | None", verdict: Verdict,
                     witness_state: str | None) -> None:
    """Append the log steps of a bundle verification to `verdict`; never raises for bundle content.

    Steps: "log entry" (present; required if the policy says so), "log checkpoint" (signed by the
    policy's key), "log inclusion" (leaf_hash(log_entry_bytes(bundle)) at index in treeSize under
    the checkpoint's root) and "log witness" (consistency with the witness state, if given).
    A damaged witness state file raises UnusableInput: it is the verifier's own input.
    """
    logged = check_log_entry(log_entry_bytes(bundle), bundle.get(LOG_ENTRY_KEY), log_policy, verdict, witness_state,
                             what="bundle",
                             missing_hint="publish it with `aaudit log publish BUNDLE.json --log HOST:PORT`")
    if logged is not None:
        verdict.claims["log"] = logged


def check_log_entry(entry_bytes: bytes, raw: Any, log_policy: "LogPolicy | None", verdict: Verdict,
                    witness_state: str | None, *, prefix: str = "", what: str = "bundle",
                    missing_hint: str = "") -> dict[str, Any] | None:
    """The log steps for any logged record (a bundle, a receipt batch): `raw` is its "logEntry" JSON
    (None when it has none), `entry_bytes` the exact bytes the log stores for it. Step names are
    `prefix` + "log entry" / "log checkpoint" / "log inclusion" / "log witness"; `what` names the
    record in reasons. Returns the checked position (origin, index, treeSize, root) once inclusion is
    proven, else None. Raises only for the verifier's own inputs (policy key, witness state file)."""
    if raw is None:
        if log_policy is not None and log_policy.require_inclusion:
            verdict.fail(prefix + "log entry", f"the policy requires a transparency-log entry and the {what} has "
                         f"none; {missing_hint}")
        else:
            verdict.skip(prefix + "log entry", f"{what} is not in a transparency log and the policy does not "
                         "require it")
        return None
    if log_policy is None:
        verdict.skip(prefix + "log entry", "the policy has no [log] table with the log's public_key: the log entry "
                     "was not checked")
        return None
    log_key = policy_log_key(log_policy)
    try:
        entry = LogEntry.from_json(raw)
    except ParseError as exc:
        verdict.fail(prefix + "log entry", f"malformed: {exc}")
        return None
    verdict.ok(prefix + "log entry", f"entry {entry.index} of log {entry.origin} (tree size {entry.tree_size})")

    try:
        cp = verify_checkpoint(entry.checkpoint, log_key)
    except (ParseError, VerificationError) as exc:
        hint = f" (the entry names log key {entry.log_key})" if entry.log_key and \
            entry.log_key != log_policy.public_key else ""
        verdict.fail(prefix + "log checkpoint", f"{exc}{hint}")
        return None
    if (cp.origin, cp.size) != (entry.origin, entry.tree_size):
        verdict.fail(prefix + "log checkpoint", f"the entry claims {entry.origin} size {entry.tree_size}, its "
                     f"checkpoint says {cp.origin} size {cp.size}")
        return None
    verdict.ok(prefix + "log checkpoint", f"signed by {cp.origin}: size {cp.size}, root {b64e(cp.root)}")

    leaf = leaf_hash(entry_bytes)
    if not verdict.check(prefix + "log inclusion",
                         verify_inclusion(leaf, entry.index, entry.tree_size, entry.inclusion_proof, cp.root),
                         f"the {what} is entry {entry.index} of the checkpoint's tree",
                         f"the inclusion proof does not lead from this {what}'s leaf hash {leaf.hex()} at index "
                         f"{entry.index} to the checkpoint root: the {what} or its proof was altered"):
        return None
    logged = {"origin": cp.origin, "index": entry.index, "treeSize": cp.size, "root": b64e(cp.root)}

    if witness_state is None:
        verdict.skip(prefix + "log witness", "no witness state given: consistency with earlier checkpoints was not "
                     "checked, so a log showing different histories to different people is not detected")
        return logged
    try:
        result = witness_update(witness_state, entry.checkpoint, entry.consistency, log_key)
    except VerificationError as exc:
        verdict.fail(prefix + "log witness", str(exc))
        return logged
    verdict.ok(prefix + "log witness", result.message)
    return logged
