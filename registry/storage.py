"""Object storage through fsspec: where artifacts and sealed prediction logs live.

A location is an fsspec URL: ``file:///abs/path`` (the default, a local directory) or
``s3://bucket/prefix`` (needs the ``s3`` extra, i.e. ``s3fs``). ``ROOST_S3_ENDPOINT_URL`` points
``s3://`` at an S3-compatible server (MinIO, or moto in the test suite); credentials come from
the usual ``AWS_*`` environment variables.

Atomicity: an S3 PUT (and a multipart upload, completed in one call) makes the object visible
whole or not at all, so writers upload straight to the final key; local writers keep their
temp-file + fsync + rename path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from registry.settings import RoostSettings

LOCAL_PROTOCOLS = frozenset({"", "file", "local"})
_CHUNK = 4 << 20


def protocol_of(url: str) -> str:
    """``s3``, ``file``, ... (``""`` for a plain path)."""
    return urlsplit(url).scheme if "://" in url else ""


def is_local(url: str) -> bool:
    return protocol_of(url) in LOCAL_PROTOCOLS


def local_path(url: str) -> Path:
    """The directory of a ``file://`` URL (or plain path)."""
    if not is_local(url):
        raise ValueError(f"{url!r} is not a local location")
    if "://" not in url:
        return Path(url).absolute()
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"{url!r}: file URLs name no host (file:///abs/path)")
    return Path(parts.path)


S3_READ_TIMEOUT_S = 300
"""s3fs waits 15 s for a response by default; completing the multipart upload of a
gigabyte-sized artifact can take longer, and a retried CompleteMultipartUpload fails."""


def storage_options(url: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """fsspec options for ``url``: for S3 a longer read timeout, and the endpoint if set."""
    if protocol_of(url) not in ("s3", "s3a"):
        return {}
    options: dict[str, Any] = {"config_kwargs": {"read_timeout": S3_READ_TIMEOUT_S}}
    if endpoint_url:
        options["client_kwargs"] = {"endpoint_url": endpoint_url}
    return options


@dataclass(frozen=True)
class Location:
    """A directory in some filesystem: ``fs`` and ``root`` (a path in ``fs``, no protocol)."""

    url: str
    fs: AbstractFileSystem
    root: str

    @classmethod
    def open(cls, url: str, endpoint_url: str | None = None) -> Location:
        import fsspec.core

        fs, root = fsspec.core.url_to_fs(url, **storage_options(url, endpoint_url))
        return cls(url.rstrip("/"), fs, str(root).rstrip("/"))

    @property
    def local(self) -> bool:
        return is_local(self.url)

    def path(self, relative: str) -> str:
        """The path of ``relative`` (``a/b/c``) under the root, in ``fs``."""
        return f"{self.root}/{relative.lstrip('/')}"

    def url_of(self, relative: str) -> str:
        return f"{self.url}/{relative.lstrip('/')}"

    def upload(self, local_file: Path, relative: str) -> str:
        """Copy ``local_file`` to ``relative`` in one PUT (or one multipart upload): readers see
        the whole object or none. Returns its URL."""
        self.fs.put_file(str(local_file), self.path(relative))
        return self.url_of(relative)

    def glob(self, relative_pattern: str) -> list[str]:
        """Paths (in ``fs``) matching the pattern, from a fresh listing."""
        self.fs.invalidate_cache()
        return sorted(str(p) for p in self.fs.glob(self.path(relative_pattern)))

    def read_chunks(self, relative: str) -> Iterator[bytes]:
        with self.fs.open(self.path(relative), "rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk


def artifacts_location(settings: RoostSettings) -> Location:
    return Location.open(settings.artifacts_location, settings.s3_endpoint_url)


def logs_location(settings: RoostSettings) -> Location:
    return Location.open(settings.logs_location, settings.s3_endpoint_url)
