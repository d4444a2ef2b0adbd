"""Content-addressed artifact store: files named by their sha256, checked on every load.

The store is a local directory or, for a cluster, object storage (``ROOST_ARTIFACTS_URL=
s3://bucket/prefix``, see :mod:`registry.storage`). Locally an artifact is written to a temp
file, fsynced and renamed into place; on S3 it is PUT to its final key (a PUT is atomic). Every
load re-hashes the bytes; a load from object storage is cached in a local file
(``$ROOST_HOME/cache/artifacts/<sha256>``), which is re-verified by hash on every use.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from registry.errors import ArtifactIntegrityError, NotFound
from registry.storage import Location, is_local, local_path

if TYPE_CHECKING:
    from registry.settings import RoostSettings

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """Stores immutable artifacts under ``root/sha256/<ab>/<digest>``.

    ``root`` is a directory or an fsspec URL (``file://...``, ``s3://bucket/prefix``).
    ``put`` is idempotent (the same bytes land once); ``get`` re-hashes what it reads and refuses
    bytes that no longer match their name. ``cache_dir`` (remote stores only) keeps a verified
    local copy of each artifact loaded, so a restart does not fetch it again.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        cache_dir: Path | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        self.remote: Location | None = None
        if isinstance(root, Path) or is_local(root):
            self.root = root if isinstance(root, Path) else local_path(root)
            self.url = self.root.absolute().as_uri()
        else:
            self.remote = Location.open(root, endpoint_url)
            self.url = self.remote.url
            self.root = Path(self.remote.root)
        self.cache_dir = cache_dir

    @classmethod
    def from_settings(cls, settings: RoostSettings) -> ArtifactStore:
        """The store at ``ROOST_ARTIFACTS_URL`` (default ``$ROOST_HOME/artifacts``)."""
        location = settings.artifacts_location
        if is_local(location):
            return cls(local_path(location))
        return cls(
            location, cache_dir=settings.artifact_cache_dir, endpoint_url=settings.s3_endpoint_url
        )

    @staticmethod
    def key_for(digest: str) -> str:
        """``sha256/<ab>/<digest>``: where the artifact lives relative to the store's root."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return f"sha256/{digest[:2]}/{digest}"

    def path_for(self, digest: str) -> Path:
        """The artifact's file in a local store (a remote store: its path in the bucket)."""
        return self.root / self.key_for(digest)

    def location_of(self, digest: str) -> str:
        """The artifact's URL."""
        return f"{self.url}/{self.key_for(digest)}"

    def exists(self, digest: str) -> bool:
        if self.remote is not None:
            self.remote.fs.invalidate_cache()
            return bool(self.remote.fs.exists(self.remote.path(self.key_for(digest))))
        return self.path_for(digest).is_file()

    def delete(self, digest: str) -> bool:
        """Remove the artifact (and any cached copy); False if it was not there."""
        if self.cache_dir is not None:
            (self.cache_dir / digest).unlink(missing_ok=True)
        if self.remote is not None:
            if not self.exists(digest):  # S3 answers a DELETE of a missing key with 204
                return False
            self.remote.fs.rm_file(self.remote.path(self.key_for(digest)))
            self.remote.fs.invalidate_cache()
            return True
        try:
            self.path_for(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def put(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        if self.remote is not None:
            return self._put_remote(data, digest)
        target = self.path_for(digest)
        if target.exists() and self._digest_of(target) == digest:
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def _put_remote(self, data: bytes, digest: str) -> str:
        assert self.remote is not None
        key = self.key_for(digest)
        if self.exists(digest):
            h = hashlib.sha256()
            for chunk in self.remote.read_chunks(key):
                h.update(chunk)
            if h.hexdigest() == digest:
                return digest
        # One PUT (or one completed multipart upload): the object appears whole or not at all.
        self.remote.fs.pipe_file(self.remote.path(key), data)
        return digest

    def get(self, digest: str) -> bytes:
        """The artifact's bytes, verified against ``digest``."""
        if self.remote is not None:
            return self._get_remote(digest)
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"artifact sha256:{digest} is missing from {self.root}") from None
        _verify(data, digest, self.url)
        return data

    def _get_remote(self, digest: str) -> bytes:
        """From the local cache when it holds a copy that still hashes right, else fetched."""
        assert self.remote is not None
        cached = self.cache_dir / digest if self.cache_dir is not None else None
        if cached is not None and cached.is_file():
            data = cached.read_bytes()
            if sha256_bytes(data) == digest:
                return data
            cached.unlink(missing_ok=True)  # a damaged cache entry: fetch again
        key = self.key_for(digest)
        try:
            data = bytes(self.remote.fs.cat_file(self.remote.path(key)))
        except FileNotFoundError:
            raise NotFound(f"artifact sha256:{digest} is missing from {self.url}") from None
        _verify(data, digest, self.url)
        if cached is not None:
            _write_atomically(cached, data)
        return data

    @staticmethod
    def _digest_of(path: Path) -> str:
        h = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()


def _verify(data: bytes, digest: str, where: str) -> None:
    actual = sha256_bytes(data)
    if actual != digest:
        raise ArtifactIntegrityError(
            f"artifact sha256:{digest} in {where} is corrupt: its bytes hash to "
            f"sha256:{actual}; refusing to serve it"
        )


def _write_atomically(target: Path, data: bytes) -> None:
    """``data`` to ``target`` via a temp file in the same directory (no fsync: a cache)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
