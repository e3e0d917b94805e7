"""Plugins from a user's own package: a real second distribution, built and installed here,
adds a model, a data source, a pruning method and an IMP sibling through entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from lotterylab.platform.store.experiment_store import ExperimentStore

CHECKOUT = Path(__file__).resolve().parent.parent

TOY_MODULE = '''
"""A toy plugin: everything a user adds to lotterylab, in one module of their own package."""

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.data.registry import DataSource
from lotterylab.platform.imp.siblings import Sibling
from lotterylab.platform.models import ModelEntry
from lotterylab.platform.pruning import Method
from lotterylab.platform.schema import Strict


class ToyMLPModel(Strict):
    name: Literal["toy_mlp"] = Field("toy_mlp", description="model name in the registry")
    width: Annotated[int, Field(ge=1)] = Field(8, description="hidden units")


def build_toy_mlp(spec, image_shape, num_classes):
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(image_shape), spec.width),
        nn.ReLU(),
        nn.Linear(spec.width, num_classes),
    )


class ToyBlobsData(Strict):
    type: Literal["toy_blobs"] = Field(description="data source name in the registry")
    name: str = Field(description="data set name")
    n_train: Annotated[int, Field(ge=4)] = Field(64, description="training images")
    n_test: Annotated[int, Field(ge=4)] = Field(32, description="test images")
    seed: int = Field(0, description="sampling seed")


def build_toy_blobs(spec, context):
    generator = torch.Generator().manual_seed(spec.seed)

    def split(n):
        y = torch.arange(n) % 2
        x = torch.randn(n, 16, generator=generator) + 2.0 * y[:, None].float()
        return x, y

    train_x, train_y = split(spec.n_train)
    test_x, test_y = split(spec.n_test)
    return ImageDataset(spec.name, train_x, train_y, test_x, test_y, (1, 4, 4), 2)


class PowerHParams(Strict):
    power: Annotated[float, Field(gt=0)] = Field(2.0, description="exponent of |w|")


def power_scores(net, masks, data, generator, hparams):
    return {n: w.detach().abs() ** hparams.power for n, w in net.weights().items()}


def smallest_scores(ctx):
    return {n: -w.abs() for n, w in ctx.dense_final.items()}


MODEL = ModelEntry(ToyMLPModel, build_toy_mlp)
DATA = DataSource(
    ToyBlobsData,
    build_toy_blobs,
    image_shape=lambda s: (1, 4, 4),
    num_classes=lambda s: 2,
)
METHOD = Method(power_scores, PowerHParams, single_shot=True)
SIBLING = Sibling(smallest_scores, "the smallest weights of the dense trained net")
'''


def _distribution(root: Path, name: str, module: str, source: str, points: dict) -> Path:
    """A buildable source tree: pyproject with entry points, and one module."""
    tree = root / name
    (tree / module).mkdir(parents=True)
    (tree / module / "__init__.py").write_text(source)
    groups = "\n".join(
        f'[project.entry-points."{group}"]\n' + "".join(f'{k} = "{v}"\n' for k, v in items.items())
        for group, items in points.items()
    )
    (tree / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "0.1.0"

            [tool.setuptools]
            packages = ["{module}"]

            """
        )
        + groups
    )
    return tree


def _install(tree: Path, target: Path) -> None:
    """pip builds the wheel and installs it (metadata and entry points) into ``target``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(tree),
        ],
        check=True,
        capture_output=True,
    )


def _lotterylab(site: list[Path], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, site), str(CHECKOUT)])
    return subprocess.run(
        [sys.executable, "-m", "lotterylab.command", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    tree = _distribution(
        root,
        "lotterylab-toy-plugin",
        "toy_plugin",
        TOY_MODULE,
        {
            "lotterylab.models": {"toy_mlp": "toy_plugin:MODEL"},
            "lotterylab.datasets": {"toy_blobs": "toy_plugin:DATA"},
            "lotterylab.pruning_methods": {"toy_power": "toy_plugin:METHOD"},
            "lotterylab.imp_siblings": {"toy_smallest": "toy_plugin:SIBLING"},
        },
    )
    site = root / "site"
    _install(tree, site)
    assert (site / "toy_plugin" / "__init__.py").exists()
    return site


def _spec(kind: str) -> dict:
    spec = {
        "name": f"toy_{kind}",
        "kind": kind,
        "seeds": [0],
        "datasets": [{"name": "blobs", "type": "toy_blobs"}],
        "model": {"name": "toy_mlp", "width": 6},
        "resources": {"cpu": 1, "gpu": 0},
        "run": {"max_failures": 0},
    }
    if kind == "imp":
        spec["training"] = {"lr": 0.1, "batch_size": 16, "steps": 20, "rewind_step": 2}
        spec["imp"] = {"rounds": 1, "fraction": 0.5, "baselines": ["toy_smallest", "random"]}
    else:
        spec["training"] = {"lr": 0.1, "batch_size": 16, "epochs": 1}
        spec["pai"] = {
            "methods": ["toy_power", "random"],
            "densities": [0.25],
            "scoring_batches": 1,
            "scoring_batch_size": 16,
            "hparams": {"toy_power": {"power": 3.0}},
        }
    return spec


def test_a_plugin_adds_entries_that_validate_like_built_ins(toy_site, tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(_spec("pai")))
    done = _lotterylab([toy_site], "validate", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    bad = _spec("pai")
    bad["pai"]["hparams"]["toy_power"]["power"] = -1
    path.write_text(yaml.safe_dump(bad))
    done = _lotterylab([toy_site], "validate", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "pai.hparams.toy_power.power" in done.stderr
    # without the plugin installed the same names are unknown
    done = _lotterylab([], "validate", str(path), cwd=tmp_path)
    assert done.returncode == 2 and "toy_blobs" in done.stderr


@pytest.mark.parametrize("kind", ["imp", "pai"])
def test_a_plugins_entries_run_end_to_end(toy_site, tmp_path, kind):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(_spec(kind)))
    results = tmp_path / "results"
    done = _lotterylab([toy_site], "run", str(path), "--storage", str(results), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    store = ExperimentStore(str(results / f"toy_{kind}"))
    if kind == "imp":
        rows = store.read_table("rounds").to_pylist()
        methods = {r["method"] for r in rows}
        assert methods == {"imp", "toy_smallest", "random"}
        last = [r for r in rows if r["round"] == 1]
        assert all(r["sparsity"] == pytest.approx(0.5, abs=0.01) for r in last)
        assert all(r["model"] == "toy_mlp" and r["rf_width_median"] is None for r in rows)
    else:
        rows = store.read_table("pai_masks").to_pylist()
        assert {r["method"] for r in rows} == {"toy_power", "random"}
        assert all(r["density"] == pytest.approx(0.25) for r in rows)


def test_a_name_clash_names_both_distributions(toy_site, tmp_path):
    clash = _distribution(
        tmp_path,
        "lotterylab-clashing-plugin",
        "clashing_plugin",
        "from toy_plugin import METHOD\n",
        {"lotterylab.pruning_methods": {"snip": "clashing_plugin:METHOD"}},
    )
    site = tmp_path / "site"
    _install(clash, site)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(_spec("pai")))
    done = _lotterylab([toy_site, site], "validate", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "'lotterylab-clashing-plugin'" in done.stderr and "'lotterylab'" in done.stderr
    assert "snip" in done.stderr
