"""Every platform module keeps the one `Platform` contract, and every allow-list follows one rule.

The bundle verifier knows platforms only through that contract, so it holds no platform name and
reads no step names; allow-lists in every platform table and in `[expect]` are parsed and checked
by one parser and one check (`verifier.platforms.allowlist`).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from verifier import platforms, policy
from verifier.errors import PolicyError
from verifier.models import PLATFORMS, Status, Verdict
from verifier.platforms import Platform, allowlist

REPO = Path(__file__).resolve().parents[1]
HEX48, HEX32 = "ab" * 48, "cd" * 32

# Every allow-list a policy can hold: (where it lives, key, a valid value in upper case).
ALLOW_LISTS = [
    ("sim", "measurements", HEX32.upper()),
    ("sev-snp", "measurements", HEX48.upper()),
    ("sev-snp", "host_data", HEX32.upper()),
    ("sev-snp", "id_key_digests", HEX48.upper()),
    *[("tdx", key, HEX48.upper()) for key in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "mrowner")],
    *[("nitro", f"pcr{i}", HEX48.upper()) for i in (0, 1, 2, 3, 4, 8)],
    ("nvidia", "driver_versions", "550.90.07"),
    ("nvidia", "vbios_versions", "96.00.9F.00.01"),
    ("expect", "code_identity", HEX32.upper()),
]


def _policy(where: str, key: str, value: Any) -> policy.Policy:
    data: dict[str, Any] = {"allow_simulated": True} if where in ("sim", "expect") else {}
    if where == "expect":
        data["expect"] = {key: value}
    else:
        data[where] = {key: value}
    return policy.parse(data, "p.toml")


def _parsed(pol: policy.Policy, where: str, key: str) -> tuple[str, ...] | None:
    if where == "expect":
        return pol.code_identities
    obj = pol.platforms[where]
    if where == "tdx":
        return obj.measurements.get(key)
    if where == "nitro":
        return obj.pcrs.get(int(key.removeprefix("pcr")))
    return getattr(obj, key)


@pytest.mark.parametrize("where, key, value", ALLOW_LISTS)
def test_one_allow_list_rule_everywhere(where: str, key: str, value: str) -> None:
    # Either case is accepted and kept in lower case.
    assert _parsed(_policy(where, key, [value, value.lower()]), where, key) == (value.lower(), value.lower())
    # [] pins nothing and would accept nothing: refused, with the same advice everywhere.
    with pytest.raises(PolicyError, match=re.escape(f"{key} = [] would accept nothing") + ".*remove the key"):
        _policy(where, key, [])
    # A bare string, a wrong length, a number: refused, naming the key.
    for bad in (value, [value + " !"], [1], ["x" * 65]):
        with pytest.raises(PolicyError, match=re.escape(key) + " must be a non-empty list of"):
            _policy(where, key, bad)
    # Absent: not pinned.
    if where != "expect":
        base = {"allow_simulated": True} if where == "sim" else {where: {}}
        assert _parsed(policy.parse(base), where, key) is None


def test_the_one_check() -> None:
    v = Verdict("t")
    allowlist.check(v, "unpinned", "AB", None)
    allowlist.check(v, "absent", None, ("ab",))
    allowlist.check(v, "upper case", "AB", ("ab",))
    allowlist.check(v, "other", "ac", ("ab",))
    assert [(s.name, s.status) for s in v.steps] == [("unpinned", Status.SKIPPED), ("absent", Status.FAILED),
                                                     ("upper case", Status.OK), ("other", Status.FAILED)]
    assert v.steps[0].reason == "AB not pinned by policy"
    assert v.steps[3].reason == "ac is not in the policy's allow-list"


@pytest.mark.parametrize("name", PLATFORMS)
def test_every_platform_module_keeps_the_contract(name: str) -> None:
    module = platforms.get(name)
    assert isinstance(module, Platform) and module.NAME == name
    for member in ("parse", "parse_policy", "baseline_policy", "verify", "validate", "identity_claims", "is_pinned"):
        want = inspect.signature(getattr(Platform, member))
        got = inspect.signature(getattr(module, member))
        params = [p for p in want.parameters.values() if p.name != "self"]
        # The module takes at least the protocol's parameters, by the same names and kinds, in order.
        assert [(p.name, p.kind) for p in list(got.parameters.values())[:len(params)]] == \
            [(p.name, p.kind) for p in params], (name, member)
        assert all(p.default is not inspect.Parameter.empty for p in list(got.parameters.values())[len(params):])


# What pins the code each platform runs: the launch measurement, or its equivalent.
PINNING = [
    ("sim", {"measurements": [HEX32]}, True),
    ("sim", {}, False),
    ("sev-snp", {"measurements": [HEX48]}, True),
    ("sev-snp", {"host_data": [HEX32], "id_key_digests": [HEX48]}, False),
    ("tdx", {k: [HEX48] for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2")}, True),
    ("tdx", {"mrtd": [HEX48]}, False),  # the firmware alone: any kernel and command line
    ("tdx", {k: [HEX48] for k in ("mrtd", "rtmr0", "rtmr1", "rtmr3")}, False),
    ("nitro", {"pcr0": [HEX48]}, True),
    ("nitro", {"pcr1": [HEX48], "pcr2": [HEX48]}, True),
    ("nitro", {"pcr1": [HEX48], "pcr8": [HEX48]}, False),
    ("nvidia", {"driver_versions": ["550.90.07"]}, False),  # a GPU runs no enclave code
]


@pytest.mark.parametrize("name, table, pinned", PINNING)
def test_is_pinned(name: str, table: dict, pinned: bool) -> None:
    module = platforms.get(name)
    assert module.is_pinned(module.parse_policy(table)) is pinned


def test_identity_claims_come_from_the_platform() -> None:
    claims = {"measurement": "m", "host_data": "h", "chip_id": "c", "report_data": "r"}
    assert platforms.get("sev-snp").identity_claims(claims) == {"measurement": "m", "host_data": "h", "chip_id": "c"}
    assert platforms.get("sim").identity_claims({}) == {"measurement": None}
    assert platforms.get("nvidia").identity_claims(claims) == {}


def test_bundle_names_no_platform_and_reads_no_step_names() -> None:
    source = (REPO / "verifier" / "bundle.py").read_text()
    for name in PLATFORMS:
        assert f'"{name}"' not in source and f"'{name}'" not in source, name
    assert ".name.split(" not in source and "s.name" not in source


def test_sim_has_no_baseline() -> None:
    assert platforms.get("sim").baseline_policy(False) is None
    assert not policy.baseline("sim", False).accepts("sim")
    assert policy.baseline("sev-snp", False).accepts("sev-snp")
