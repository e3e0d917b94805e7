"""IMP lineage procedure, without Ray: exact pruning counts, removal rounds, baselines, resume."""

import pytest
import torch

from lotterylab.platform.data.registry import build_dataset
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.imp.lineage import IMP, IMPLineage, LineageConfig
from lotterylab.platform.models import FCN, apply_masks
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore


def make_lineage(spec_dict, tmp_path, dataset="nlgp", seed=0, folder="exp"):
    spec = parse_spec(spec_dict)
    store = ExperimentStore(str(tmp_path / folder))
    config = LineageConfig(store.name, dataset, seed, spec)
    return IMPLineage(config, build_dataset(spec.datasets, dataset), store), store


def run_all(lineage):
    """Run every round, recording the mask IMP trained under in each round."""
    trained_masks = []
    while not lineage.done:
        n = lineage.next_round
        trained_masks.append(
            {
                k: v.clone()
                for k, v in mk.masks_after_round(lineage.removal_rounds[IMP], n - 1).items()
            }
        )
        lineage.run_round()
    return trained_masks


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_imp_prunes_exactly_the_fraction_and_removal_rounds_replay_every_mask(
    tiny_spec_dict, tmp_path, scope
):
    tiny_spec_dict["imp"]["scope"] = scope
    lineage, store = make_lineage(tiny_spec_dict, tmp_path)
    recorded = run_all(lineage)
    fraction, rounds = 0.4, 3
    assert len(recorded) == rounds + 1
    rr = store.read_tensors(f"lineages/{lineage.id}/masks/imp.pt")
    assert set(rr) == {"layers.0.weight", "layers.1.weight"}  # output layer not prunable
    for n in range(1, rounds + 1):
        before, after = recorded[n - 1], recorded[n]
        alive_before = sum(int(m.sum()) for m in before.values())
        alive_after = sum(int(m.sum()) for m in after.values())
        if scope == "layer":
            for name in before:
                expected = int(before[name].sum()) - round(fraction * int(before[name].sum()))
                assert int(after[name].sum()) == expected
        assert alive_after == alive_before - round(fraction * alive_before) or scope == "layer"
        assert all(bool((after[k] <= before[k]).all()) for k in after)  # nested
    for n, masks in enumerate(recorded):
        replay = mk.masks_after_round(rr, n - 1)
        for name in masks:
            assert torch.equal(replay[name], masks[name])


def test_baselines_match_imp_counts_and_are_nested(tiny_spec_dict, tmp_path):
    lineage, store = make_lineage(tiny_spec_dict, tmp_path)
    run_all(lineage)
    rrs = {m: store.read_tensors(f"lineages/{lineage.id}/masks/{m}.pt") for m in lineage.methods}
    for n in range(0, 4):
        imp = mk.alive_counts(mk.masks_after_round(rrs["imp"], n - 1))
        for method in ("oneshot", "random"):
            masks = mk.masks_after_round(rrs[method], n - 1)
            assert mk.alive_counts(masks) == imp
    # oneshot keeps the largest dense final weights of its layer
    final = mk.masks_after_round(rrs["oneshot"], 2)["layers.0.weight"]
    dense = lineage.dense_final["layers.0.weight"].abs()
    assert dense[final].min() >= dense[~final].max()
    # random masks are not magnitude masks
    random_final = mk.masks_after_round(rrs["random"], 2)["layers.0.weight"]
    assert not torch.equal(random_final, final)


def test_rows_streamed_per_round_with_values(tiny_spec_dict, tmp_path):
    lineage, store = make_lineage(tiny_spec_dict, tmp_path)
    lineage.run_round()
    table = store.read_table("rounds").to_pylist()
    assert {(r["round"], r["method"]) for r in table} == {(0, "imp"), (0, "oneshot"), (0, "random")}
    assert all(r["sparsity"] == 0.0 for r in table)
    accuracies = {r["test_accuracy"] for r in table}
    assert len(accuracies) == 1 and 0.6 < accuracies.pop() <= 1.0  # two classes: above chance
    lineage.run_round()
    rows = [r for r in store.read_table("rounds").to_pylist() if r["round"] == 1]
    assert len(rows) == 3
    for row in rows:
        assert row["sparsity_first_layer"] == pytest.approx(round(0.4 * 64 * 32) / (64 * 32))
        assert row["test_accuracy"] is not None and row["rf_width_median"] > 0
        assert row["empty_units"] >= 0
    info = store.read_json(f"lineages/{lineage.id}/lineage.json")
    assert info["last_round"] == 1 and info["device"] == "cpu"


def test_masks_are_enforced_during_training(tiny_spec_dict, tmp_path):
    # momentum and weight decay are what could revive a pruned weight
    tiny_spec_dict["training"].update(momentum=0.9, weight_decay=1e-3)
    lineage, _ = make_lineage(tiny_spec_dict, tmp_path)
    lineage.run_round()
    masks = mk.masks_after_round(lineage.removal_rounds[IMP], 0)
    model = lineage._rewound_model(masks)
    weights = dict(model.named_parameters())
    assert all(bool((weights[n][~m] == 0).all()) for n, m in masks.items())
    from lotterylab.platform.training import train

    train(model, lineage.data, lineage.spec.training, seed=3, masks=masks)
    weights = dict(model.named_parameters())
    for name, mask in masks.items():
        assert bool((weights[name][~mask] == 0).all())
        assert bool((weights[name][mask] != 0).any())


def test_apply_masks_rejects_wrong_shapes():
    model = FCN(16, [4], 2)
    with pytest.raises(ValueError, match="layers.0.weight"):
        apply_masks(model, {"layers.0.weight": torch.ones(3, 3, dtype=torch.bool)})


def test_lineage_is_bit_reproducible_and_resumes_exactly(tiny_spec_dict, tmp_path):
    full, full_store = make_lineage(tiny_spec_dict, tmp_path, folder="a")
    run_all(full)

    first, _ = make_lineage(tiny_spec_dict, tmp_path, folder="b")
    first.run_round()
    first.run_round()
    state = first.state_dict()
    torch.save(state, tmp_path / "ckpt.pt")
    resumed, resumed_store = make_lineage(tiny_spec_dict, tmp_path, folder="b")
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    run_all(resumed)

    for method in full.methods:
        rel = f"lineages/{full.id}/masks/{method}.pt"
        a, b = full_store.read_tensors(rel), resumed_store.read_tensors(rel)
        assert all(torch.equal(a[k], b[k]) for k in a)
    drop = {"wall_time_s"}
    rows_a = sorted(
        (
            {k: v for k, v in r.items() if k not in drop}
            for r in full_store.read_table("rounds").to_pylist()
        ),
        key=lambda r: (r["round"], r["method"]),
    )
    rows_b = sorted(
        (
            {k: v for k, v in r.items() if k not in drop}
            for r in resumed_store.read_table("rounds").to_pylist()
        ),
        key=lambda r: (r["round"], r["method"]),
    )
    for row in rows_a + rows_b:
        row["experiment"] = "x"
    assert rows_a == rows_b


def test_checkpoint_of_another_lineage_is_refused(tiny_spec_dict, tmp_path):
    a, _ = make_lineage(tiny_spec_dict, tmp_path, seed=0)
    b, _ = make_lineage(tiny_spec_dict, tmp_path, seed=1)
    with pytest.raises(ValueError, match="belongs to lineage"):
        b.load_state_dict(a.state_dict())


def test_biases_and_output_layer_can_be_pruned(tiny_spec_dict, tmp_path):
    tiny_spec_dict["imp"].update(prune_biases=True, prune_output=True, rounds=2, scope="global")
    lineage, store = make_lineage(tiny_spec_dict, tmp_path)
    run_all(lineage)
    rr = store.read_tensors(f"lineages/{lineage.id}/masks/imp.pt")
    assert set(rr) == {f"layers.{i}.{k}" for i in range(3) for k in ("weight", "bias")}
    total = sum(t.numel() for t in rr.values())
    alive = sum(int(m.sum()) for m in mk.masks_after_round(rr, 1).values())
    after_one = total - round(0.4 * total)
    assert alive == after_one - round(0.4 * after_one)
    # the pruned biases are zero in the rewound, masked network
    model = lineage._rewound_model(mk.masks_after_round(rr, 1))
    for i, layer in enumerate(model.layers):
        pruned = ~mk.mask_after_round(rr[f"layers.{i}.bias"], 1)
        assert bool((layer.bias.detach()[pruned] == 0).all())


def test_stacked_trainings_of_a_round_equal_one_at_a_time(tiny_spec_dict, tmp_path):
    tiny_spec_dict["training"].update(optimizer="nesterov", momentum=0.9, weight_decay=1e-3)
    rows, masks = {}, {}
    for setting in ("off", "auto"):
        tiny_spec_dict["run"]["batch_lineages"] = setting
        lineage, store = make_lineage(tiny_spec_dict, tmp_path, folder=setting)
        assert lineage.stacks == (setting != "off")
        run_all(lineage)
        masks[setting] = lineage.removal_rounds
        rows[setting] = sorted(
            store.read_table("rounds").to_pylist(), key=lambda r: (r["round"], r["method"])
        )
    for method, tensors in masks["off"].items():
        for name, removal in tensors.items():
            assert torch.equal(removal, masks["auto"][method][name]), (method, name)
    for one, stacked in zip(rows["off"], rows["auto"], strict=True):
        assert (one["method"], one["round"]) == (stacked["method"], stacked["round"])
        assert stacked["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1e-2)
