"""The verification policy: a TOML file that names what is acceptable.

Nothing defaults to "accept anything": a platform is accepted only when the policy has a table for
it (`[sev-snp]`, `[tdx]`, `[nitro]`, `[nvidia]`) or, for the simulator, `allow_simulated = true`.
Each platform table is parsed by its platform module (`verifier.platforms.*.parse_policy`).

    allow_simulated = false        # development only: accept the `sim` attester
    max_age = "30d"                # optional: oldest acceptable report (s, m, h, d)

    [sev-snp]                      # see each platform module for its keys
    measurements = ["<hex>"]

    [nvidia]
    required = true                # CPU evidence must carry NVIDIA GPU evidence

    [expect]                       # digests the statement must carry
    model_digest = "sha256:<hex>"
    dataset_digest = "sha256:<hex>"
    spec_digest = "sha256:<hex>"
    code_identity = ["<hex>"]      # enclave code identities allowed (`aaudit enclave measure`)

    [[threshold]]                  # compliance thresholds on result metrics
    task = "mmlu"
    metric = "acc"
    min = 0.6                      # and/or max = ...

    [log]
    public_key = "<C2SP note verifier key>"
    require_inclusion = true
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verifier import platforms
from verifier.errors import PolicyError

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_AGE = re.compile(r"^(\d+)([smhd])$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_HARDWARE = ("sev-snp", "tdx", "nitro", "nvidia")
_TOP_KEYS = {"allow_simulated", "max_age", "expect", "threshold", "log", "sim", *_HARDWARE}


@dataclass(frozen=True)
class Threshold:
    task: str
    metric: str
    min: float | None = None
    max: float | None = None

    def describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min}")
        if self.max is not None:
            parts.append(f"<= {self.max}")
        return f"{self.task}/{self.metric} {' and '.join(parts)}"


@dataclass(frozen=True)
class LogPolicy:
    public_key: str
    require_inclusion: bool


@dataclass(frozen=True)
class Policy:
    """A parsed policy. `platforms` maps an accepted platform name to its module's policy object."""

    platforms: dict[str, Any] = field(default_factory=dict)
    gpu_required: bool = False
    max_age_s: int | None = None
    expect: dict[str, str] = field(default_factory=dict)
    code_identities: tuple[str, ...] | None = None  # None: not pinned
    thresholds: tuple[Threshold, ...] = ()
    log: LogPolicy | None = None
    source: str = "<policy>"

    def accepts(self, platform: str) -> bool:
        return platform in self.platforms


def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise PolicyError(f"{where}: {msg}")


def parse(data: dict[str, Any], source: str = "<policy>") -> Policy:
    unknown = set(data) - _TOP_KEYS
    _require(not unknown, source, f"unknown key(s) {', '.join(sorted(unknown))}")
    accepted: dict[str, Any] = {}

    allow_sim = data.get("allow_simulated", False)
    _require(isinstance(allow_sim, bool), source, "allow_simulated must be true or false")
    sim_table = data.get("sim", {})
    _require(isinstance(sim_table, dict), source, "[sim] must be a table")
    _require(allow_sim or not sim_table, source, "[sim] given but allow_simulated is not true")
    if allow_sim:
        accepted["sim"] = _platform_policy("sim", sim_table, source)

    gpu_required = False
    for name in _HARDWARE:
        if name in data:
            table = data[name]
            _require(isinstance(table, dict), source, f"[{name}] must be a table")
            if name == "nvidia":
                table = dict(table)
                gpu_required = table.pop("required", False)
                _require(isinstance(gpu_required, bool), f"{source} [nvidia]", "required must be true or false")
            accepted[name] = _platform_policy(name, table, source)
    _require(bool(accepted), source, "accepts no platform: add a platform table or allow_simulated = true")

    max_age_s = None
    if "max_age" in data:
        m = _AGE.match(str(data["max_age"]))
        _require(m is not None, source, 'max_age must look like "90s", "15m", "12h" or "30d"')
        assert m is not None
        max_age_s = int(m.group(1)) * _AGE_UNITS[m.group(2)]

    expect = data.get("expect", {})
    _require(isinstance(expect, dict), source, "[expect] must be a table")
    expect = dict(expect)
    code_ids = expect.pop("code_identity", None)
    _require(code_ids is None or (isinstance(code_ids, list) and all(isinstance(c, str) and _HEX64.match(c) for c in code_ids)),
             f"{source} [expect]", "code_identity must be a list of 64-digit lowercase hex strings")
    for key, value in expect.items():
        _require(key in ("model_digest", "dataset_digest", "spec_digest"), f"{source} [expect]", f"unknown key {key!r}")
        _require(isinstance(value, str) and _DIGEST.match(value) is not None, f"{source} [expect]",
                 f"{key} must be 'sha256:' and 64 lowercase hex digits")

    thresholds = []
    raw = data.get("threshold", [])
    _require(isinstance(raw, list), source, "threshold must be an array of tables ([[threshold]])")
    for i, t in enumerate(raw):
        where = f"{source} threshold[{i}]"
        _require(isinstance(t, dict), where, "must be a table")
        _require(set(t) <= {"task", "metric", "min", "max"}, where, f"unknown key(s) in {sorted(t)}")
        _require(isinstance(t.get("task"), str) and isinstance(t.get("metric"), str), where, "needs task and metric")
        _require("min" in t or "max" in t, where, "needs min or max")
        for bound in ("min", "max"):
            if bound in t:
                v = t[bound]
                _require(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), where,
                         f"{bound} must be a finite number")
        thresholds.append(Threshold(t["task"], t["metric"], t.get("min"), t.get("max")))

    log = None
    if "log" in data:
        table = data["log"]
        _require(isinstance(table, dict), source, "[log] must be a table")
        _require(set(table) <= {"public_key", "require_inclusion"}, f"{source} [log]", "unknown key")
        _require(isinstance(table.get("public_key"), str), f"{source} [log]", "public_key is required")
        req = table.get("require_inclusion")
        _require(isinstance(req, bool), f"{source} [log]", "require_inclusion must be set to true or false")
        log = LogPolicy(table["public_key"], req)

    return Policy(accepted, gpu_required, max_age_s, expect, None if code_ids is None else tuple(code_ids),
                  tuple(thresholds), log, source)


def _platform_policy(name: str, table: dict[str, Any], source: str) -> Any:
    try:
        return platforms.get(name).parse_policy(table)
    except PolicyError as exc:
        raise PolicyError(f"{source} [{name}]: {exc}") from None


def load(path: str | Path) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"policy {p} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy {p} is not valid TOML: {exc}") from None
    return parse(data, str(p))


def baseline(platform: str, allow_debug: bool) -> Policy:
    """The policy used without a policy file: this platform, authentic, debug per flag, unpinned."""
    return Policy({platform: platforms.get(platform).baseline_policy(allow_debug)}, source="baseline")
