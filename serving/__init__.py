"""The serving gateway: transports (REST; gRPC next) over one data plane over model backends."""

from serving.app import create_app

__all__ = ["create_app"]
