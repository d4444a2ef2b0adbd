"""``features/`` as a Feast feature repository: its yaml, its .feastignore, its declarations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from feast.repo_config import load_repo_config
from feast.repo_operations import get_repo_files

from assets.features import ACTIVITY_FILE
from features import definitions
from features.store import FEATURE_STORE_YAML, FeatureSettings, repo_config

REPO = FEATURE_STORE_YAML.parent


def test_feast_sees_only_the_definitions_module() -> None:
    assert [p.name for p in get_repo_files(REPO)] == ["definitions.py"]


def test_the_assets_write_the_file_the_source_reads() -> None:
    assert definitions.customer_activity_source.path == ACTIVITY_FILE == definitions.ACTIVITY_FILE


def test_the_yaml_puts_registry_online_store_and_data_under_the_home(tmp_path: Path) -> None:
    settings = FeatureSettings(home=tmp_path / "home", redis_url=None)
    config = repo_config(settings)
    assert config.project == "roost"
    assert config.registry.path == str(tmp_path / "home" / "features" / "registry.db")
    assert config.online_store.type == "sqlite"
    assert config.online_store.path == str(tmp_path / "home" / "features" / "online_store.db")
    assert config.offline_store.type == "file"
    assert config.repo_path == tmp_path / "home" / "features"


def test_the_feast_cli_reads_the_yaml_with_roost_home_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    config = load_repo_config(REPO, FEATURE_STORE_YAML)  # what `feast -c features ...` does
    assert config.registry.path == f"{tmp_path}/features/registry.db"


def test_window_views_expire_with_their_windows_and_declare_defaults() -> None:
    assert definitions.customer_profile.ttl == timedelta(days=3650)
    assert definitions.customer_activity_24h.ttl == timedelta(days=1)
    assert definitions.customer_activity_30d.ttl == timedelta(days=30)
    defaults = {
        f.name: (f.tags or {}).get(definitions.DEFAULT_TAG)
        for view in (definitions.customer_profile, definitions.customer_activity_24h,
                     definitions.customer_activity_30d)
        for f in view.features
    }
    assert defaults == {
        "customer_age_days": None,  # no default: an unknown customer is an error
        "txn_count_24h": "0",
        "txn_count_30d": "0",
        "amount_sum_30d": "0",
    }
    assert definitions.fraud_v1.name == definitions.FRAUD_FEATURE_SERVICE == "fraud_v1"
