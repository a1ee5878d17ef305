"""The policy file: nothing defaults to "accept anything", and mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from verifier import policy
from verifier.errors import PolicyError


def test_empty_policy_accepts_nothing() -> None:
    with pytest.raises(PolicyError, match="accepts no platform"):
        policy.parse({})


def test_sim_only_with_allow_simulated() -> None:
    assert policy.parse({"allow_simulated": True}).accepts("sim")
    with pytest.raises(PolicyError, match="allow_simulated is not true"):
        policy.parse({"sim": {"measurements": []}})


@pytest.mark.parametrize("data, message", [
    ({"allow_simulated": "yes"}, "allow_simulated must be true or false"),
    ({"allow_simulated": True, "bogus": 1}, "unknown key"),
    ({"allow_simulated": True, "expect": {"model_digest": "abc"}}, "sha256:"),
    ({"allow_simulated": True, "threshold": [{"task": "t", "metric": "acc"}]}, "needs min or max"),
    ({"allow_simulated": True, "threshold": [{"task": "t", "metric": "acc", "min": float("nan")}]}, "finite"),
    ({"allow_simulated": True, "log": {"public_key": "k"}}, "require_inclusion must be set"),
    ({"allow_simulated": True, "max_age": "soon"}, "max_age"),
    ({"allow_simulated": True, "sim": {"measurements": ["xyz"]}}, "64-digit"),
])
def test_malformed_policies_are_named(data: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policy.parse(data)


def test_full_policy_parses(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text('allow_simulated = true\nmax_age = "2d"\n[sim]\nmeasurements = ["' + "a" * 64 + '"]\n'
                 '[expect]\nmodel_digest = "sha256:' + "0" * 64 + '"\n'
                 '[[threshold]]\ntask = "t"\nmetric = "acc"\nmin = 0.5\n'
                 '[log]\npublic_key = "log+00000000+AQ=="\nrequire_inclusion = true\n')
    pol = policy.load(p)
    assert pol.max_age_s == 2 * 86400
    assert pol.thresholds[0].min == 0.5 and pol.thresholds[0].describe() == "t/acc >= 0.5"
    assert pol.log is not None and pol.log.require_inclusion
    assert pol.platforms["sim"].measurements == ("a" * 64,)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy"):
        policy.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("allow_simulated = = true")
    with pytest.raises(PolicyError, match="not valid TOML"):
        policy.load(bad)
