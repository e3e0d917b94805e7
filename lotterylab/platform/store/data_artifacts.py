"""What an experiment stores about its data before any trial runs: example images of every data
set and, when the spec asks, PCA and FastICA components of natural image patches (paper 1
Figs. 2 and 3), so the figures can be drawn from the store alone."""

from __future__ import annotations

import torch

from lotterylab.platform.data.dataset import ImageDataset
from lotterylab.platform.data.sample_patches import sample_image_patches
from lotterylab.platform.metrics import image_components
from lotterylab.platform.spec import ExperimentSpec
from lotterylab.platform.store.experiment_store import ExperimentStore


def write_data_artifacts(
    spec: ExperimentSpec, datasets: dict[str, ImageDataset], store: ExperimentStore
) -> list[str]:
    """Write ``data/<name>/examples.pt`` and ``data/components/<source>.pt``; return paths."""
    written = []
    count = spec.analysis.examples
    for name, data in datasets.items():
        if count == 0:
            break
        index = torch.arange(min(count, data.size("train")))
        rel = f"data/{name}/examples.pt"
        store.write_tensors(
            rel,
            {
                "x": data.batch("train", index),
                "y": data.train_y[index],
                "image_shape": torch.tensor(data.image_shape),
            },
        )
        written.append(rel)
    components = spec.analysis.components
    if components is not None:
        if components.source == "sample_patches":
            channels = next(iter(datasets.values())).image_shape[0]
            patches, image_shape = sample_image_patches(
                size=components.patch_size,
                count=components.patches,
                seed=components.seed,
                channels=channels,
            )
        else:
            data = datasets[components.source]
            count = min(components.patches, data.size("train"))
            patches, image_shape = data.batch("train", torch.arange(count)), data.image_shape
        pca, ica = image_components(patches, components.n_components, components.seed)
        rel = f"data/components/{components.source}.pt"
        store.write_tensors(
            rel, {"pca": pca, "ica": ica, "image_shape": torch.tensor(tuple(image_shape))}
        )
        written.append(rel)
    return written
