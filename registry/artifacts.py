"""Content-addressed artifact store: files named by their sha256, checked on every load."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from registry.errors import ArtifactIntegrityError, NotFound

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """Stores immutable artifacts under ``root/sha256/<ab>/<digest>``.

    ``put`` is idempotent (the same bytes land once); ``get`` re-hashes what it reads and refuses
    bytes that no longer match their name.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.root / "sha256" / digest[:2] / digest

    def put(self, data: bytes) -> str:
        digest = sha256_bytes(data)
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

    def get(self, digest: str) -> bytes:
        """The artifact's bytes, verified against ``digest``."""
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"artifact sha256:{digest} is missing from {self.root}") from None
        actual = sha256_bytes(data)
        if actual != digest:
            raise ArtifactIntegrityError(
                f"artifact sha256:{digest} is corrupt: its bytes hash to sha256:{actual}; "
                "refusing to serve it"
            )
        return data

    @staticmethod
    def _digest_of(path: Path) -> str:
        h = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()
