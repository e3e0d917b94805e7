"""Every shipped experiment spec validates, and its grid is the size its comment promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from lotterylab.platform.pai.run import pai_grid
from lotterylab.platform.spec import PAPER2_DENSITIES, load_spec

EXPERIMENTS = sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_spec_validates(path):
    spec, _ = load_spec(path)
    assert spec.name == path.stem


def test_paper2_grids_are_seven_methods_by_nine_densities_by_three_seeds():
    spec, _ = load_spec(Path("experiments/pai_resnet20_cifar10.yaml"))
    assert spec.pai.densities == PAPER2_DENSITIES
    assert len(pai_grid(spec)) == 7 * 9 * 3
    assert {r["rounds"] for r in pai_grid(spec) if r["method"] in ("px", "ntksap")} == {100}
    assert {r["rounds"] for r in pai_grid(spec) if r["method"] == "snip"} == {1}


def test_timing_spec_crosses_iterative_methods_with_every_round_count():
    spec, _ = load_spec(Path("experiments/pai_timing.yaml"))
    runs = pai_grid(spec)
    assert sorted({r["rounds"] for r in runs if r["method"] == "px"}) == [1, 2, 10, 100, 200]
    # single-shot methods score once: 4 of them + 3 iterative x 5 round counts, x 3 seeds
    assert len(runs) == (4 + 3 * 5) * 3
