"""PaI runs without Ray: pruning at init, epochs, exact resume, sanity-check branches."""

import copy

import numpy as np
import pytest
import torch

from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.device import trial_device
from lotterylab.platform.pai.run import PaIConfig, PaIRun
from lotterylab.platform.spec import SpecError, parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore


def make_run(spec_dict, tmp_path, method="snip", density=0.2, folder="exp", **branch):
    spec = parse_spec(spec_dict)
    store = ExperimentStore(str(tmp_path / folder))
    config = PaIConfig(store.name, "nlgp3", 0, method, density, 1, spec, **branch)
    return PaIRun(config, build_dataset(spec.datasets, "nlgp3"), store), store


def run_all(run):
    if not run.pruned:
        run.prune()
    while not run.done:
        run.run_epoch()


def prunable_total(run):
    return sum(m.numel() for m in run.masks.values())


def test_prune_keeps_the_exact_density_and_streams_rows(pai_spec_dict, tmp_path):
    run, store = make_run(pai_spec_dict, tmp_path)
    row = run.prune()
    kept = sum(int(m.sum()) for m in run.masks.values())
    assert kept == round(0.2 * prunable_total(run))
    assert row["actual_density"] == pytest.approx(kept / prunable_total(run))
    assert row["scoring_time_s"] > 0 and not row["collapsed"]
    # ResNet-20: 19 convs, 2 shortcut convs and the classifier are all prunable
    assert len(run.masks) == 22
    weights = dict(run.model.named_parameters())
    assert all(bool((weights[n][~m] == 0).all()) for n, m in run.masks.items())
    run_all(run)
    epochs = store.read_table("pai_epochs").to_pylist()
    assert sorted(r["epoch"] for r in epochs) == [0, 1, 2]
    assert [r["final"] for r in sorted(epochs, key=lambda r: r["epoch"])] == [False, False, True]
    assert all(0 <= r["test_accuracy"] <= 1 for r in epochs)
    assert all(r["train_loss"] > 0 for r in epochs if r["epoch"] > 0)
    # pruned weights stay zero through momentum and weight decay
    weights = dict(run.model.named_parameters())
    assert all(bool((weights[n][~m] == 0).all()) for n, m in run.masks.items())
    assert store.read_tensors(f"runs/{run.id}/masks.pt").keys() == run.masks.keys()


def test_resumed_run_equals_the_uninterrupted_one(pai_spec_dict, tmp_path):
    full, _ = make_run(pai_spec_dict, tmp_path, folder="a")
    run_all(full)
    first, _ = make_run(pai_spec_dict, tmp_path, folder="b")
    first.prune()
    first.run_epoch()
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    resumed, store = make_run(pai_spec_dict, tmp_path, folder="b")
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    run_all(resumed)
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    final = [r for r in store.read_table("pai_epochs").to_pylist() if r["final"]]
    assert len(final) == 1


def test_branches_reuse_the_parent_mask(pai_spec_dict, tmp_path):
    parent, store = make_run(pai_spec_dict, tmp_path)
    parent.prune()
    reinit, _ = make_run(pai_spec_dict, tmp_path, branch="reinit", parent_id=parent.id)
    reinit.prune()
    assert all(torch.equal(reinit.masks[n], parent.masks[n]) for n in parent.masks)
    first = "conv.weight" if "conv.weight" in parent.masks else next(iter(parent.masks))
    reinit_w = dict(reinit.model.named_parameters())[first]
    parent_w = dict(parent.model.named_parameters())[first]
    assert not torch.equal(reinit_w, parent_w)  # a fresh initialisation

    shuffle, _ = make_run(pai_spec_dict, tmp_path, branch="shuffle", parent_id=parent.id)
    shuffle.prune()
    for name, mask in parent.masks.items():
        assert int(shuffle.masks[name].sum()) == int(mask.sum())  # layer densities kept
    assert any(not torch.equal(shuffle.masks[n], parent.masks[n]) for n in parent.masks)

    invert, _ = make_run(pai_spec_dict, tmp_path, branch="invert", parent_id=parent.id)
    invert.prune()
    kept = sum(int(m.sum()) for m in invert.masks.values())
    assert kept == sum(int(m.sum()) for m in parent.masks.values())
    overlap = sum(int((invert.masks[n] & parent.masks[n]).sum()) for n in parent.masks)
    assert overlap < 0.1 * kept  # the lowest scores instead of the highest
    rows = store.read_table("pai_masks").to_pylist()
    assert {(r["branch"], r["parent_id"]) for r in rows} == {
        ("", None),
        ("reinit", parent.id),
        ("shuffle", parent.id),
        ("invert", parent.id),
    }
    assert len({r["run_id"] for r in rows}) == 4


def test_pai_on_the_fcn_records_first_layer_rf_width(pai_spec_dict, tmp_path):
    pai_spec_dict["model"] = {"name": "fcn", "hidden": [32, 16]}
    pai_spec_dict["datasets"][0].update(channels=1)
    pai_spec_dict["training"].update(augment="none", epochs=1, lr_drops=[])
    run, _ = make_run(pai_spec_dict, tmp_path, method="px", density=0.1)
    row = run.prune()
    assert row["rf_width_median"] > 0
    assert set(run.masks) == {"layers.0.weight", "layers.1.weight", "layers.2.weight"}


def test_pai_spec_sections_are_checked(pai_spec_dict):
    bad = copy.deepcopy(pai_spec_dict)
    bad["pai"]["methods"] = ["snip", "magic"]
    with pytest.raises(SpecError, match=r"pai.methods.*'magic'.*allowed"):
        parse_spec(bad, "s.yaml")
    bad = copy.deepcopy(pai_spec_dict)
    del bad["training"]["epochs"]
    with pytest.raises(SpecError, match="training.epochs: required with kind: pai"):
        parse_spec(bad, "s.yaml")
    bad = copy.deepcopy(pai_spec_dict)
    bad["imp"] = {"rounds": 2}
    with pytest.raises(SpecError, match="imp: section not allowed with kind: pai"):
        parse_spec(bad, "s.yaml")
    bad = copy.deepcopy(pai_spec_dict)
    bad["pai"]["hparams"] = {"grasp": {"temperature": -1}}
    with pytest.raises(SpecError, match="pai.hparams.grasp.temperature"):
        parse_spec(bad, "s.yaml")
    bad = copy.deepcopy(pai_spec_dict)
    bad["training"]["lr"] = float("inf")
    with pytest.raises(SpecError, match="training.lr"):
        parse_spec(bad, "s.yaml")
    bad = copy.deepcopy(pai_spec_dict)
    bad["training"]["batch_size"] = 10_000
    with pytest.raises(SpecError, match=r"training.batch_size \(10000\).*n_train"):
        parse_spec(bad, "s.yaml")


def test_trial_device_is_the_cpu_without_a_visible_gpu():
    assert trial_device(0).type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert trial_device(0.25).type == expected


def test_segmentation_runs_score_on_label_maps(pai_spec_dict, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    root = tmp_path / "voc"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    names = [f"i{k}" for k in range(6)]
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names[:4]))
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names[4:]))
    for name in names:
        photo = rng.integers(0, 256, (32, 32, 3), dtype="uint8")
        Image.fromarray(photo).save(root / "JPEGImages" / f"{name}.jpg")
        labels = rng.integers(0, 21, (32, 32)).astype("uint8")
        labels[:2] = 255  # object borders: unlabelled
        Image.fromarray(labels, mode="P").save(root / "SegmentationClass" / f"{name}.png")
    pai_spec_dict["datasets"] = [{"name": "nlgp3", "type": "voc", "root": str(root), "size": 32}]
    pai_spec_dict["model"] = {"name": "deeplabv3_resnet50"}
    pai_spec_dict["training"].update(
        augment="none", epochs=1, lr_drops=[], batch_size=4, eval_batch_size=2
    )
    pai_spec_dict["pai"].update(methods=["snip"], scoring_batch_size=4)
    run, store = make_run(pai_spec_dict, tmp_path, density=0.5)
    row = run.prune()
    assert row["actual_density"] == pytest.approx(0.5, abs=1e-4)
    run.run_epoch()
    epochs = store.read_table("pai_epochs").to_pylist()
    assert {r["epoch"] for r in epochs} == {0, 1}
    assert all(0.0 <= r["test_miou"] <= 1.0 for r in epochs)
