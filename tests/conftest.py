"""Test configuration: the committed vectors (owned by tests/vectors.py) must all be present before anything runs."""

from __future__ import annotations

import pytest
import vectors


def pytest_sessionstart(session: pytest.Session) -> None:
    try:
        vectors.require_all()
    except FileNotFoundError as exc:
        pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
