"""The artifact store on S3 (moto's server mode on loopback stands in for S3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from roost_testing import deploy_model, make_linear_onnx, make_mlp_onnx, running_gateway
from s3 import MotoS3, moto_server

from registry import ArtifactIntegrityError, NotFound, Registry, RoostSettings
from registry.artifacts import ArtifactStore, sha256_bytes


@pytest.fixture(scope="session")
def s3() -> MotoS3:
    return moto_server()


@pytest.fixture
def s3_settings(tmp_path: Path, s3: MotoS3) -> RoostSettings:
    bucket = s3.fresh_bucket()
    return RoostSettings(
        home=tmp_path / "roost",
        artifacts_url=f"s3://{bucket}/artifacts",
        logs_url=f"s3://{bucket}/logs",
        s3_endpoint_url=s3.endpoint_url,
    )


@pytest.fixture
def s3_registry(s3_settings: RoostSettings) -> Iterator[Registry]:
    reg = Registry.from_settings(s3_settings)
    yield reg
    reg.close()


def bucket_of(settings: RoostSettings) -> str:
    assert settings.artifacts_url is not None
    return settings.artifacts_url.removeprefix("s3://").split("/", 1)[0]


def test_defaults_are_local_file_urls(tmp_path: Path) -> None:
    settings = RoostSettings(home=tmp_path)
    assert settings.artifacts_location == (tmp_path / "artifacts").as_uri()
    assert settings.logs_location == (tmp_path / "logs").as_uri()
    staging = settings.model_copy(update={"scope": "staging", "logs_url": "s3://b/logs"})
    assert staging.logs_location == "s3://b/logs-staging"
    store = ArtifactStore.from_settings(settings)
    assert store.remote is None and store.root == tmp_path / "artifacts"


def test_round_trip_checks_integrity_on_every_load(
    s3_settings: RoostSettings, s3: MotoS3
) -> None:
    store = ArtifactStore.from_settings(s3_settings)
    assert store.remote is not None
    data = make_linear_onnx(seed=3)
    digest = store.put(data)
    assert digest == sha256_bytes(data) and store.put(data) == digest  # idempotent
    bucket = bucket_of(s3_settings)
    key = f"artifacts/{store.key_for(digest)}"
    assert s3.keys(bucket) == [key]
    assert store.exists(digest)

    assert store.get(digest) == data  # cold: fetched, verified, cached
    cached = s3_settings.artifact_cache_dir / digest
    assert cached.read_bytes() == data

    # A damaged cache entry is noticed and fetched again.
    cached.write_bytes(b"garbage")
    assert store.get(digest) == data and cached.read_bytes() == data

    # A corrupted object is refused, and nothing corrupt is cached.
    cached.unlink()
    s3.client().put_object(Bucket=bucket, Key=key, Body=data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(ArtifactIntegrityError, match="corrupt"):
        store.get(digest)
    assert not cached.exists()

    # put() repairs a corrupt object with the right bytes.
    store.put(data)
    assert store.get(digest) == data

    assert store.delete(digest) and not store.exists(digest) and not cached.exists()
    assert not store.delete(digest)
    with pytest.raises(NotFound, match="missing"):
        store.get(digest)


def test_gateway_serves_a_model_whose_artifact_lives_only_in_s3(
    s3_settings: RoostSettings, s3_registry: Registry, s3: MotoS3
) -> None:
    data = make_mlp_onnx(n_features=1024, hidden=1024, layers=1, seed=1)  # ~4 MB
    assert len(data) > 4_000_000
    version = deploy_model(s3_registry, "big", data)
    digest = s3_registry.get_version("big", version).sha256
    assert not (s3_settings.home / "artifacts").exists()  # nothing on local disk ...
    assert f"artifacts/{ArtifactStore.key_for(digest)}" in s3.keys(bucket_of(s3_settings))
    assert not (s3_settings.artifact_cache_dir / digest).exists()  # ... not even cached

    with running_gateway(s3_settings) as base:
        ready = httpx.get(f"{base}/v2/models/big/ready", timeout=10)
        assert ready.status_code == 200
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1024],
                            "data": [0.5] * 1024}]}
        answer = httpx.post(f"{base}/v2/models/big/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert output["name"] == "probabilities" and output["shape"] == [1, 2]
    assert (s3_settings.artifact_cache_dir / digest).read_bytes() == data
