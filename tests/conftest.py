"""Shared fixtures: a real registry in a temporary ROOST_HOME and small real ONNX models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

# prometheus_client picks its value storage when first imported; Feast sets
# PROMETHEUS_MULTIPROC_DIR when *it* is imported, which would make every gateway in this test
# process share metric values. Importing prometheus_client first keeps them separate, as in a
# gateway process (which imports its metrics long before Feast).
import prometheus_client  # noqa: F401  (import order matters, see above)
import pytest

from registry import Registry, RoostSettings


@pytest.fixture
def settings(tmp_path: Path) -> RoostSettings:
    return RoostSettings(home=tmp_path / "roost")


@pytest.fixture
def registry(settings: RoostSettings) -> Iterator[Registry]:
    reg = Registry.from_settings(settings)
    yield reg
    reg.close()
