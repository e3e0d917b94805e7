"""Connecting the driver to Ray: an embedded local instance, or an existing cluster.

Before Ray is reached, secret cloud credentials leave the process environment for a private
credentials file (see :mod:`lotterylab.cluster.credentials`), so Tune cannot copy them into
trial runtime environments, which Ray logs in plain text.
"""

from __future__ import annotations

import logging
import os

import ray

from lotterylab.cluster.credentials import HiddenCredentials, hide_secrets, restore_secrets

_hidden: HiddenCredentials | None = None


def connect(address: str | None = None) -> None:
    """Start an embedded Ray (``address`` None) or join a running cluster ("auto", "host:port").

    With ``address`` None a driver started by ``ray job submit`` (``RAY_ADDRESS`` set) joins
    its cluster; any other starts its own Ray.
    """
    global _hidden
    # also when Ray is already up: Tune reads the environment when it launches trials
    if _hidden is None:
        _hidden = hide_secrets()
    if ray.is_initialized():
        return
    options = dict(logging_level=logging.WARNING, log_to_driver=True)
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # "local": a fresh instance, never a cluster some other program started on this host
        # (plain ``ray.init()`` joins the one recorded in /tmp/ray/ray_current_cluster)
        ray.init(address="local", include_dashboard=False, **options)
    else:  # an explicit address, or RAY_ADDRESS as `ray job submit` sets for its drivers
        ray.init(address=address, **options)


def disconnect() -> None:
    """Shut Ray down, then give the environment its credentials back."""
    global _hidden
    if ray.is_initialized():
        ray.shutdown()
    if _hidden is not None:
        restore_secrets(_hidden)
        _hidden = None
