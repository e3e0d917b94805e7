"""Connecting the driver to Ray: an embedded local instance, or an existing cluster."""

from __future__ import annotations

import logging

import ray


def connect(address: str | None = None) -> None:
    """Start an embedded Ray (``address`` None) or join a running cluster ("auto", "host:port")."""
    if ray.is_initialized():
        return
    options = dict(logging_level=logging.WARNING, log_to_driver=True)
    if address is None:
        ray.init(include_dashboard=False, **options)
    else:
        ray.init(address=address, **options)


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()
