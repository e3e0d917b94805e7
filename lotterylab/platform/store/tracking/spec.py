"""The ``tracking:`` section of a spec: where the platform's rows are mirrored.

Only addresses and names live here; credentials come from each tool's own environment
variables and config files (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME`` /
``_PASSWORD``, ``WANDB_API_KEY``, ``~/.netrc``), so the resolved spec the store keeps holds none.
The section changes no lineage or run id: identities hash chosen sections only.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from lotterylab.platform.schema import Strict

_NAME = Annotated[str, Field(min_length=1, max_length=200)]


class MLflowSpec(Strict):
    """An MLflow tracking server or database, and the experiment the runs land in."""

    tracking_uri: Annotated[str, Field(min_length=1, max_length=2000)] = Field(
        description="MLflow tracking URI: http(s)://host:port of a server, or "
        "sqlite:///path/mlflow.db for a local database"
    )
    experiment: _NAME = Field(description="MLflow experiment name (created when missing)")
    artifact_location: Annotated[str, Field(min_length=1, max_length=2000)] | None = Field(
        None,
        description="where a newly created experiment keeps artifacts (figures); "
        "default: the tracking server's choice",
    )

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.username or parts.password:
            raise ValueError(
                "must not hold credentials (user:password@): set MLFLOW_TRACKING_USERNAME / "
                "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead"
            )
        return uri


class WandbSpec(Strict):
    """A Weights & Biases project; offline mode writes run files to sync later."""

    project: _NAME = Field(description="W&B project name")
    entity: _NAME | None = Field(None, description="W&B entity (team or user); default: yours")
    mode: Literal["online", "offline"] = Field(
        "online", description="online sends as it logs; offline writes under WANDB_DIR"
    )


class TrackingSpec(Strict):
    """Experiment trackers that receive a copy of every lineage's and run's rows."""

    mlflow: MLflowSpec | None = Field(None, description="log to MLflow")
    wandb: WandbSpec | None = Field(None, description="log to Weights & Biases")

    @model_validator(mode="after")
    def _one_at_least(self) -> TrackingSpec:
        if self.mlflow is None and self.wandb is None:
            raise ValueError("tracking: give mlflow, wandb or both (or leave tracking out)")
        return self
