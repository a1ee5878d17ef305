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

    [expect]                       # what the statement must carry
    model_digest = "sha256:<hex>"
    dataset_digest = "sha256:<hex>"
    spec_digest = "sha256:<hex>"
    judges_digest = "sha256:<hex>" # optional: the auditor's judge models (a bundle without judges fails)
    code_identity = ["<hex>"]      # enclave code identities allowed (`aaudit enclave measure`)
    # The party keys: each the text of the party's `aaudit keygen` .pub file. The manifest must
    # name that key, and every approval of that role must be signed by it.
    provider_key = '''
    -----BEGIN PUBLIC KEY-----
    MCowBQYDK2VwAyEA...
    -----END PUBLIC KEY-----
    '''
    auditor_key = '''...'''

    [[threshold]]                  # compliance thresholds on result metrics
    task = "mmlu"
    metric = "acc"
    min = 0.6                      # and/or max = ...

    [log]
    public_key = "<C2SP note verifier key>"
    require_inclusion = true

    [prepare]                      # step B: the audited model was made from a pinned original
    original_model_digest = "sha256:<hex>"   # digest(M); the audit must carry a prepare statement
    methods = ["int8-weight-only"] # the accepted methods (verifier/prepare.py METHODS)

Allow-lists (measurements, PCRs, code_identity, ...) follow one rule, `verifier.platforms.allowlist`.
A bundle verdict names what its policy leaves unpinned (`Policy.unpinned`): the model, dataset and
spec digests, the code identity (neither `code_identity` nor the platform's launch measurement) and
the log (no `[log]` with `require_inclusion = true`); for an audit that used judges, also the judges
digest unless pinned (added by the bundle check, which sees the statement).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verifier import platforms
from verifier.errors import ParseError, PolicyError
from verifier.inputs import parse_public_key
from verifier.platforms import allowlist
from verifier.manifest import ROLES

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_AGE = re.compile(r"^(\d+)([smhd])$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_AGE_S = 100 * 365 * 86400  # a century: longer is a typo, and would overflow date arithmetic
_HARDWARE = ("sev-snp", "tdx", "nitro", "nvidia")
_TOP_KEYS = {"allow_simulated", "max_age", "expect", "threshold", "log", "prepare", "sim", *_HARDWARE}
_ASSET_DIGESTS = ("model_digest", "dataset_digest", "spec_digest")  # every audit has these
_OPTIONAL_DIGESTS = ("judges_digest",)  # only an audit whose spec names judges has it


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
class PreparePolicy:
    """`[prepare]`: the original model an audited Mq must come from, and how it may have been made."""

    original_model_digest: str | None
    methods: tuple[str, ...] | None   # None: any method the verifier knows


@dataclass(frozen=True)
class Policy:
    """A parsed policy. `platforms` maps an accepted platform name to its module's policy object."""

    platforms: dict[str, Any] = field(default_factory=dict)
    gpu_required: bool = False
    max_age_s: int | None = None
    expect: dict[str, str] = field(default_factory=dict)  # model_, dataset_, spec_ and judges_digest
    code_identities: allowlist.AllowList | None = None  # None: not pinned
    thresholds: tuple[Threshold, ...] = ()
    log: LogPolicy | None = None
    source: str = "<policy>"
    party_keys: dict[str, bytes] = field(default_factory=dict)  # role -> raw Ed25519 key
    prepare: PreparePolicy | None = None

    def accepts(self, platform: str) -> bool:
        return platform in self.platforms

    def pins_measurement(self, platform: str) -> bool:
        """Whether the policy pins the launch measurement of `platform`'s evidence (the hardware's
        own record of the image it started), as opposed to the code identity the enclave reports."""
        return platform in self.platforms and platforms.get(platform).is_pinned(self.platforms[platform])

    def unpinned(self, platform: str) -> list[str]:
        """What this policy leaves open for a bundle whose evidence is from `platform`: any model
        that any auditor ran on any code would pass these checks."""
        out = [key.replace("_", " ") for key in _ASSET_DIGESTS if key not in self.expect
               and not (key == "model_digest" and self.prepare and self.prepare.original_model_digest)]
        if self.code_identities is None and not self.pins_measurement(platform):
            out.append("code identity")
        if self.log is None or not self.log.require_inclusion:
            out.append("log")
        return out


def how_to_accept(platform: str) -> str:
    """What a policy file needs so that it accepts `platform`."""
    return "allow_simulated = true" if platform == "sim" else f"a [{platform}] table"


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
        m = _AGE.match(data["max_age"]) if isinstance(data["max_age"], str) else None
        _require(m is not None, source, 'max_age must look like "90s", "15m", "12h" or "30d"')
        assert m is not None
        digits, unit = m.group(1), m.group(2)
        max_age_s = int(digits) * _AGE_UNITS[unit] if len(digits) <= 12 else MAX_AGE_S + 1
        _require(max_age_s <= MAX_AGE_S, source, f"max_age must be at most {MAX_AGE_S // 86400}d")

    expect = data.get("expect", {})
    _require(isinstance(expect, dict), source, "[expect] must be a table")
    where = f"{source} [expect]"
    try:
        code_ids = allowlist.parse(expect, "code_identity", allowlist.hex_bytes(32))
    except PolicyError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    party_keys = {role: _party_key(expect[f"{role}_key"], where, f"{role}_key")
                  for role in ROLES if f"{role}_key" in expect}
    digests = {k: v for k, v in expect.items() if k not in {"code_identity", *(f"{r}_key" for r in ROLES)}}
    for key, value in digests.items():
        _require(key in _ASSET_DIGESTS + _OPTIONAL_DIGESTS, where, f"unknown key {key!r}")
        _require(isinstance(value, str) and _DIGEST.match(value) is not None, where,
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
                _require(_finite(t[bound]), where, f"{bound} must be a finite number")
        thresholds.append(Threshold(t["task"], t["metric"], _opt_float(t.get("min")), _opt_float(t.get("max"))))

    log = None
    if "log" in data:
        table = data["log"]
        _require(isinstance(table, dict), source, "[log] must be a table")
        _require(set(table) <= {"public_key", "require_inclusion"}, f"{source} [log]", "unknown key")
        _require(isinstance(table.get("public_key"), str), f"{source} [log]", "public_key is required")
        req = table.get("require_inclusion")
        _require(isinstance(req, bool), f"{source} [log]", "require_inclusion must be set to true or false")
        log = LogPolicy(table["public_key"], req)

    return Policy(accepted, gpu_required, max_age_s, digests, code_ids, tuple(thresholds), log, source, party_keys,
                  _prepare_policy(data.get("prepare"), f"{source} [prepare]"))


def _prepare_policy(table: Any, where: str) -> PreparePolicy | None:
    """`[prepare]`: a pinned original model digest (an audit then needs a prepare statement from it)
    and/or the accepted methods."""
    if table is None:
        return None
    from verifier.prepare import METHODS

    _require(isinstance(table, dict), where, "must be a table")
    _require(set(table) <= {"original_model_digest", "methods"}, where,
             f"unknown key(s) {', '.join(sorted(set(table) - {'original_model_digest', 'methods'}))}")
    _require(bool(table), where, "pins nothing: give original_model_digest and/or methods")
    original = table.get("original_model_digest")
    _require(original is None or (isinstance(original, str) and _DIGEST.match(original) is not None), where,
             "original_model_digest must be 'sha256:' and 64 lowercase hex digits (`aaudit digest MODEL_DIR`)")
    methods = table.get("methods")
    if methods is not None:
        _require(isinstance(methods, list) and methods and all(isinstance(m, str) for m in methods), where,
                 "methods must be a non-empty list of method names")
        unknown = [m for m in methods if m not in METHODS]
        _require(not unknown, where, f"unknown method(s) {', '.join(map(repr, unknown[:5]))}; known: "
                 f"{', '.join(METHODS)}")
        methods = tuple(methods)
    return PreparePolicy(original, methods)


def _finite(value: Any) -> bool:
    """A number a float can hold exactly enough to compare: not a bool, not NaN or infinite, and no
    integer beyond the range of a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _party_key(value: Any, where: str, key: str) -> bytes:
    """The raw Ed25519 key of a party: its `.pub` file text, or the base64 / hex form keygen prints."""
    _require(isinstance(value, str), where, f"{key} must be the party's public key: the text of its .pub file, "
             "or the base64 form `aaudit keygen` prints")
    try:
        return parse_public_key(value, f"{where}: {key}")
    except ParseError as exc:
        raise PolicyError(str(exc)) from None


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
    except RecursionError:
        raise PolicyError(f"policy {p} is nested too deeply to be a policy") from None
    except ValueError as exc:  # TOMLDecodeError, and integers too long to convert
        raise PolicyError(f"policy {p} is not valid TOML: {' '.join(str(exc).split())[:200]}") from None
    return parse(data, str(p))


def baseline(platform: str, allow_debug: bool) -> Policy:
    """The policy used without a policy file: this platform, authentic, debug per flag, unpinned;
    it accepts nothing for a platform without a baseline (the simulator needs a policy file)."""
    base = platforms.get(platform).baseline_policy(allow_debug)
    return Policy({} if base is None else {platform: base}, source="baseline (no --policy)")
