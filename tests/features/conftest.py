"""Fixtures of the feature tests: a Roost home's feature settings, a filled store, Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from feature_testing import STANDARD_ROWS, RedisServer, make_store

from features.store import FeatureSettings


@pytest.fixture
def feature_settings(tmp_path: Path) -> FeatureSettings:
    return FeatureSettings(home=tmp_path / "roost", redis_url=None)


@pytest.fixture
def standard_store(feature_settings: FeatureSettings) -> Any:
    return make_store(feature_settings, STANDARD_ROWS)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()
