"""The cluster templates shipped with the package: `ray up` configs for AWS and GCP and a
KubeRay manifest, found the same way in a checkout and in an installed lotterylab.

They pin the Ray image and the Python packages lotterylab itself pins, so the head and every
worker run the driver's exact libraries; the README's "Running on a cluster" walks
through them.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

TEMPLATES = {
    "aws": "aws-gpu.yaml",  # ray up: CPU head, spot g5 GPU workers
    "gcp": "gcp-gpu.yaml",  # ray up: CPU head, spot T4 GPU workers
    "kuberay": "kuberay-raycluster.yaml",  # kubectl apply: a RayCluster with a GPU group
}


def template_path(name: str) -> Path:
    """The file of a template, by short name ("aws", "gcp", "kuberay") or file name."""
    file = TEMPLATES.get(name, name)
    if file not in TEMPLATES.values():
        raise ValueError(
            f"cluster template {name!r} is unknown; allowed: {sorted(TEMPLATES)} "
            f"or {sorted(TEMPLATES.values())}"
        )
    path = TEMPLATES_DIR / file
    if not path.is_file():
        raise FileNotFoundError(
            f"cluster template {path} is missing from this installation: reinstall lotterylab "
            "(the templates ship as package data)"
        )
    return path
