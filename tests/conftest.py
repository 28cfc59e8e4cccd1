"""Shared test setup: four host CPU devices for mesh tests, and the HF reference models."""

import os
import pathlib

# Must precede the first jax import: gives sharding tests a 4-device CPU mesh.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
T5X_FIXTURE = SHARED / "fixtures" / "t5x" / "test_t5_tiny.checkpoint_0"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not SHARED.exists():
        pytest.fail(f"{SHARED} is missing: tests read the fixtures and datasets from ../shared")
    return SHARED
