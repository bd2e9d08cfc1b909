"""Skips and paths for the habitat bridge tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TEST_DATA


def _mesh_reason() -> str | None:
    from habitat_sim_bridge.sources.mesh import osmesa_available

    return osmesa_available()


@pytest.fixture(scope="session")
def needs_osmesa() -> None:
    reason = _mesh_reason()
    if reason:
        pytest.skip(f"CPU mesh rendering unavailable: {reason}")


@pytest.fixture(scope="session")
def habitat_data() -> Path:
    """Real habitat-lab / habitat-sim files (tests/data/habitat): a recorded trajectory, a render, a z-up scene."""
    return TEST_DATA / "habitat"
