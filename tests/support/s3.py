"""An S3-compatible server on loopback for the tests: moto's server mode stands in for S3.

:func:`moto_server` starts ONE ``moto.server.ThreadedMotoServer`` per test session (however many
test files ask for it) on a free 127.0.0.1 port and stops it at interpreter exit. It sets the
``AWS_*`` variables s3fs and boto read (dummy credentials, a region) in ``os.environ``;
:meth:`MotoS3.fresh_bucket` creates an empty bucket per test, and :meth:`MotoS3.env` gives the
``ROOST_*`` variables pointing Roost's artifact store and prediction log at it.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}

_lock = threading.Lock()
_server: MotoS3 | None = None
_buckets = itertools.count()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoS3:
    endpoint_url: str
    server: Any

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")

    def fresh_bucket(self, stem: str = "roost") -> str:
        """Create and return an empty bucket with a name no other test uses."""
        name = f"{stem}-{os.getpid()}-{next(_buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str) -> dict[str, str]:
        """``ROOST_*`` (and ``AWS_*``) variables putting artifacts and logs in ``bucket``."""
        return {
            **AWS_ENV,
            "ROOST_ARTIFACTS_URL": f"s3://{bucket}/artifacts",
            "ROOST_LOGS_URL": f"s3://{bucket}/logs",
            "ROOST_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``, straight from the server."""
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def moto_server() -> MotoS3:
    """The session's moto server (started on first use)."""
    global _server
    with _lock:
        if _server is None:
            from moto.server import ThreadedMotoServer

            os.environ.update(AWS_ENV)
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
            port = _free_port()
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            atexit.register(server.stop)
            _server = MotoS3(f"http://127.0.0.1:{port}", server)
        return _server
