"""Builds the in-memory data sets an experiment spec names."""

from __future__ import annotations

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.data.gaussian_clone import gaussian_clone
from lotterylab.platform.data.nlgp import make_nlgp, make_nlgp_clone
from lotterylab.platform.spec import ExperimentSpec, GaussianCloneData, NLGPData


def build_dataset(spec: ExperimentSpec, name: str) -> ImageDataset:
    data = spec.dataset(name)
    if isinstance(data, GaussianCloneData):
        source = spec.dataset(data.of)
        if isinstance(source, NLGPData):
            # the NLGP covariance is known in closed form: clone it exactly, not from samples
            return make_nlgp_clone(**_nlgp_args(source), seed=data.seed, name=data.name)
        return gaussian_clone(build_dataset(spec, source.name), seed=data.seed, name=data.name)
    return make_nlgp(**_nlgp_args(data), seed=data.seed, name=data.name)


def build_datasets(spec: ExperimentSpec) -> dict[str, ImageDataset]:
    return {data.name: build_dataset(spec, data.name) for data in spec.datasets}


def _nlgp_args(data: NLGPData) -> dict:
    return dict(
        grid=data.grid,
        channels=data.channels,
        xi=list(data.xi),
        gain=data.gain,
        n_train=data.n_train,
        n_test=data.n_test,
    )
