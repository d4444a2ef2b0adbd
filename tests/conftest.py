"""Shared fixtures: a real registry in a temporary ROOST_HOME and small real ONNX models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
