"""Shared skips and paths for the habitat bridge tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "habitat"


def _mesh_reason() -> str | None:
    from habitat_sim_bridge.sources.mesh import osmesa_available

    return osmesa_available()


@pytest.fixture(scope="session")
def needs_osmesa() -> None:
    reason = _mesh_reason()
    if reason:
        pytest.skip(f"CPU mesh rendering unavailable: {reason}")


@pytest.fixture(scope="session")
def shared_habitat() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared Habitat data not found at {SHARED} (a fresh clone does not have ../shared/data)")
    return SHARED
