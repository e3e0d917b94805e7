"""Hostile or careless spec files are refused by ``lotterylab validate`` with exit 2, quickly,
in a short message that names the file or key path and the bound."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from lotterylab.cli import EXIT_BAD_INPUT, main
from lotterylab.platform.models.registry import build_model
from lotterylab.platform.spec import load_spec, parse_spec
from lotterylab.platform.spec.bounds import MAX_GRID, estimate_trial_memory
from lotterylab.platform.spec.safe_yaml import MAX_SPEC_BYTES


def validate(capsys, path) -> tuple[int, str]:
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


def short_lines(text: str) -> bool:
    return all(len(line) <= 400 for line in text.splitlines())


def dumped(spec: dict) -> str:
    return yaml.safe_dump(spec, sort_keys=False)


def test_yaml_aliases_are_refused_with_their_line(tiny_spec_dict, tmp_path, capsys):
    # an alias bomb inside typed fields: each level names the one above ten times
    levels = ["a0: &a0 [1.0, 2.0]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 5)]
    text = dumped(tiny_spec_dict).replace("xi:\n    - 1.0\n    - 3.0", "xi: *a4")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(levels) + "\n" + text)
    code, err = validate(capsys, path)
    assert code == EXIT_BAD_INPUT
    assert f"{path}, line 1: YAML anchor &a0 is not allowed" in err
    assert len(err) < 500

    # a plain alias of a scalar is refused too, naming its line
    text = (
        dumped(tiny_spec_dict)
        .replace("lr: 0.1", "lr: &rate 0.1")
        .replace("fraction: 0.4", "fraction: *rate")
    )
    path.write_text(text)
    code, err = validate(capsys, path)
    assert code == EXIT_BAD_INPUT and "YAML anchor &rate" in err
    line = text.splitlines().index("  lr: &rate 0.1") + 1
    assert f"line {line}:" in err


def test_a_duplicate_key_is_refused_naming_both_lines(tiny_spec_dict, tmp_path, capsys):
    text = dumped(tiny_spec_dict).replace("  steps: 60\n", "  steps: 60\n  lr: 0.5\n")
    lines = text.splitlines()
    first, second = lines.index("  lr: 0.1") + 1, lines.index("  lr: 0.5") + 1
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    code, err = validate(capsys, path)
    assert code == EXIT_BAD_INPUT
    assert f"duplicate key 'training.lr' at lines {first} and {second}" in err
    # the same key in two different mappings is fine
    assert parse_spec(tiny_spec_dict).training.lr == 0.1


def test_spec_file_size_is_capped(tiny_spec_dict, tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text(dumped(tiny_spec_dict) + "#" * MAX_SPEC_BYTES)
    code, err = validate(capsys, path)
    assert code == EXIT_BAD_INPUT
    assert f"is {path.stat().st_size} bytes; the limit is {MAX_SPEC_BYTES} bytes" in err


def test_grid_size_is_capped_with_the_numbers(tiny_spec_dict, write_spec, capsys):
    tiny_spec_dict["seeds"] = list(range(60_000))  # × 2 data sets = 120 000 lineages
    code, err = validate(capsys, write_spec(tiny_spec_dict))
    assert code == EXIT_BAD_INPUT
    assert f"2 data sets × 60000 seeds = 120000 lineages or runs; the limit is {MAX_GRID}" in err
    assert short_lines(err)


def test_error_messages_show_no_value_longer_than_a_line(tiny_spec_dict, write_spec, capsys):
    tiny_spec_dict["name"] = "x/" * 50_000
    tiny_spec_dict["datasets"][0]["xi"] = "y" * 50_000
    tiny_spec_dict["seeds"] = [7] * 20_000
    code, err = validate(capsys, write_spec(tiny_spec_dict))
    assert code == EXIT_BAD_INPUT
    assert "name:" in err and "datasets.0.xi:" in err
    assert short_lines(err) and len(err) < 2000


def test_seeds_that_repeat_are_named_in_one_line(tiny_spec_dict, write_spec, capsys):
    tiny_spec_dict["seeds"] = [7] * 20_000
    code, err = validate(capsys, write_spec(tiny_spec_dict))
    assert code == EXIT_BAD_INPUT and "seeds must not repeat" in err
    assert short_lines(err)


def test_a_spec_that_is_not_utf8_names_its_file(tiny_spec_dict, tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(dumped(tiny_spec_dict).replace("tiny", "tin\xff").encode("latin-1"))
    code, err = validate(capsys, path)
    assert code == EXIT_BAD_INPUT
    assert f"experiment spec {path} is not UTF-8 text: byte 0xff at line 1" in err


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [("steps", 10**12, "100000000"), ("epochs", 10**5, "10000")],
)
def test_training_length_has_an_upper_bound(
    tiny_spec_dict, pai_spec_dict, write_spec, capsys, field, value, bound
):
    spec = tiny_spec_dict if field == "steps" else pai_spec_dict
    spec["training"][field] = value
    code, err = validate(capsys, write_spec(spec))
    assert code == EXIT_BAD_INPUT
    assert f"training.{field}: Input should be less than or equal to {bound}" in err


def test_a_trial_too_large_for_this_machine_names_the_model_field(
    tiny_spec_dict, write_spec, capsys
):
    h = 1_000_000
    tiny_spec_dict["model"]["hidden"] = [h, h]
    code, err = validate(capsys, write_spec(tiny_spec_dict))
    assert code == EXIT_BAD_INPUT
    assert "model.hidden: one trial needs about" in err
    parameters = (64 * h + h) + (h * h + h) + (h * 2 + 2) + 2 * (64 + h + h)
    assert f"{parameters:,} parameters" in err and "of the largest node" in err
    assert "make model.hidden smaller" in err and short_lines(err)


def test_trial_memory_counts_the_registry_model_and_the_stack(tiny_spec_dict):
    spec = parse_spec(tiny_spec_dict)
    need = estimate_trial_memory(spec)
    model = build_model(spec.model, (1, 8, 8), 2, 0)
    parameters = sum(p.numel() for p in model.parameters())
    dense = 64 * 32 + 32 + 32 * 16 + 16 + 16 * 2 + 2
    assert need.parameters == parameters == dense + 2 * (64 + 32 + 16)  # + batch norms
    # auto groups the 4 lineages of a CPU spec into one trial; imp + 2 baselines stack
    assert (need.lineages, need.trainings) == (4, 12)
    assert need.weights == need.gradients == 12 * parameters * 4
    assert need.optimizer == 0  # plain SGD keeps no state
    # the generated NLGP sets and their clone: float32 images of both splits
    assert need.data == 2 * (400 + 200) * 64 * 4
    tiny_spec_dict["run"]["batch_lineages"] = "off"
    tiny_spec_dict["training"]["momentum"] = 0.9
    off = estimate_trial_memory(parse_spec(tiny_spec_dict))
    assert (off.lineages, off.trainings) == (1, 1)
    assert off.optimizer == parameters * 4
    assert torch.device("meta") != next(model.parameters()).device


def test_relative_data_paths_are_taken_from_the_spec_folder(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "specs"
    (folder / "data" / "cifar10").mkdir(parents=True)
    (folder / "cache").mkdir()  # the cache itself is made on first use
    spec = {
        "name": "rel",
        "seeds": [0],
        "datasets": [
            {"name": "c10", "type": "cifar10", "root": "data/cifar10", "cache": "cache/c10"}
        ],
        "training": {"steps": 10, "rewind_step": 1, "batch_size": 10},
    }
    path = folder / "rel.yaml"
    path.write_text(dumped(spec))
    monkeypatch.chdir(tmp_path)  # a working directory other than the spec's folder
    loaded, text = load_spec(path)
    assert loaded.datasets[0].root == str(folder / "data" / "cifar10")
    assert loaded.datasets[0].cache == str(folder / "cache" / "c10")
    assert text == path.read_text()  # the text as given is what the store keeps
    code, err = validate(capsys, path)
    assert code == 0, err

    spec["datasets"][0]["root"] = "data/missing"
    path.write_text(dumped(spec))
    code, err = validate(capsys, path)
    assert code == EXIT_BAD_INPUT
    assert f"datasets.0.root: folder {folder / 'data' / 'missing'} does not exist" in err


@pytest.mark.parametrize("storage", ["foo://bucket/x", "http://127.0.0.1/x", "memory://x"])
def test_storage_that_cannot_hold_a_lease_is_refused(tiny_spec_dict, write_spec, capsys, storage):
    spec = copy.deepcopy(tiny_spec_dict) | {"storage": storage}
    code, err = validate(capsys, write_spec(spec))
    assert code == EXIT_BAD_INPUT
    scheme = storage.split("://")[0]
    assert f"storage: {scheme}:// storage cannot hold a writer lease; allowed: a local" in err
    assert "s3://" in err and "gs://" in err
