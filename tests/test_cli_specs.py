"""Packaged specs, key=value overrides and grid values typed as printed; no Ray starts here."""

from __future__ import annotations

import pytest
import yaml

from lotterylab.cli import main
from lotterylab.cluster.launch import branch_runs
from lotterylab.platform.pai.run import PaIConfig, pai_grid
from lotterylab.platform.spec import PAPER2_DENSITIES, SpecError, load_spec, parse_spec
from lotterylab.platform.spec.grid_values import GridValueError, match_densities, match_grid_value
from lotterylab.platform.spec.overrides import apply_overrides, is_override, load_with_overrides
from lotterylab.platform.spec.ready import (
    SPECS_DIR,
    copy_ready_spec,
    default_spec_path,
    ready_spec_names,
    ready_specs,
    spec_summary,
)
from lotterylab.platform.store.experiment_store import ExperimentStore

# -- packaged specs ------------------------------------------------------------------------


def test_every_ready_spec_is_packaged_with_a_summary_and_the_readme_names_it():
    names = ready_spec_names()
    assert {"default", "pai_cpu", "paper1_cpu", "search_cpu"} <= set(names)
    assert default_spec_path() == SPECS_DIR / "default.yaml"
    summaries = ready_specs()
    assert summaries["default"] == (
        "The default experiment: runs on a 2-core laptop in under 10 minutes, no download"
    )
    assert summaries["pai_resnet20_cifar10"].startswith("Paper 2, Fig. 2 left: pruning at")
    assert all(0 < len(s) <= 100 for s in summaries.values())
    readme = (SPECS_DIR.parent.parent / "README.md").read_text()
    assert [name for name in names if f"{name}.yaml" not in readme] == []


def test_summary_is_the_first_sentence_of_the_top_comment():
    text = "# Paper 2, Fig. 4: a net (Chen et al. 2017). More here.\n# more\nname: x\n# late\n"
    assert spec_summary(text) == "Paper 2, Fig. 4: a net (Chen et al. 2017)"
    assert spec_summary("name: x\n") == ""


def test_cli_specs_lists_one_line_each(capsys):
    assert main(["specs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(ready_spec_names())
    assert lines[0].split()[0] == "default" and "The default experiment" in lines[0]


def test_init_copies_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["init", "pai_cpu", str(tmp_path)]) == 0
    copied = tmp_path / "pai_cpu.yaml"
    assert copied.read_text() == (SPECS_DIR / "pai_cpu.yaml").read_text()
    before = copied.read_text()
    copied.write_text(before + "# edited\n")
    assert main(["init", "pai_cpu", str(copied)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert copied.read_text().endswith("# edited\n")
    assert copy_ready_spec("default.yaml", tmp_path / "mine.yaml") == tmp_path / "mine.yaml"
    assert main(["init", "nonesuch", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'nonesuch' is not a packaged spec" in err and "default, imp_resnet20_cifar10" in err
    assert main(["init", "default", str(tmp_path / "no" / "dir.yaml")]) == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.split()
    assert out[0] == "lotterylab" and out[1][0].isdigit()


# -- overrides -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("training.lr=0.1", True),
        ("seeds=[0,1]", True),
        ("datasets.0.n_train=5000", True),
        ("spec.yaml", False),
        ("./a=b.yaml", False),
        ("runs/x=1", False),
        ("=1", False),
        ("0.lr=1", False),
    ],
)
def test_override_or_spec_path(argument, expected):
    assert is_override(argument) is expected


def test_overrides_change_the_spec_as_the_file_would(tmp_path):
    data = yaml.safe_load((SPECS_DIR / "default.yaml").read_text())
    spec, changed = apply_overrides(
        data,
        [
            "training.lr=0.1",
            "seeds=[0,1]",
            "imp.baselines=[oneshot]",
            "datasets.0.n_train=5000",
            "training.weight_decay=1e-4",
            "model.hidden=[32]",
        ],
    )
    assert spec.training.lr == 0.1 and spec.seeds == [0, 1]
    assert spec.imp.baselines == ["oneshot"] and spec.datasets[0].n_train == 5000
    assert spec.training.weight_decay == 1e-4 and spec.model.hidden == [32]
    assert changed["training"]["lr"] == 0.1 and data["training"]["lr"] == 0.5  # not mutated
    reference = dict(data, seeds=[0, 1])
    reference["training"] = dict(data["training"], lr=0.1, weight_decay=1e-4)
    assert spec.training == parse_spec(reference).training


def test_an_unknown_path_names_the_nearest_valid_ones():
    data = yaml.safe_load((SPECS_DIR / "default.yaml").read_text())
    with pytest.raises(SpecError) as err:
        apply_overrides(data, ["training.lrr=0.1"])
    assert "training.lrr" in str(err.value) and "nearest: training.lr" in str(err.value)
    with pytest.raises(SpecError) as err:
        apply_overrides(data, ["datasets.7.n_train=5"])
    assert "datasets.0.n_train" in str(err.value)
    with pytest.raises(SpecError) as err:
        apply_overrides(data, ["imp.rounds=0"])
    assert "imp.rounds" in str(err.value) and "(got 0)" in str(err.value)
    with pytest.raises(SpecError) as err:
        apply_overrides(data, ["seeds=[0"])
    assert "seeds=[0" in str(err.value) and "YAML" in str(err.value)


def test_a_new_variant_is_given_as_a_whole_mapping():
    data = yaml.safe_load((SPECS_DIR / "default.yaml").read_text())
    spec, _ = apply_overrides(data, ["model={name: resnet20, width: 4}"])
    assert spec.model.name == "resnet20" and spec.model.width == 4
    # a new tag keeps the old variant's keys, which the new one refuses, as in a file
    with pytest.raises(SpecError) as err:
        apply_overrides(data, ["model.name=resnet20", "model.width=4"])
    assert "model.hidden: unknown key" in str(err.value)
    assert "model.width: unknown" not in str(err.value)


def test_the_stored_text_is_the_spec_after_the_overrides(tmp_path):
    spec, text = load_with_overrides(SPECS_DIR / "default.yaml", ["training.lr=0.2", "name=x"])
    assert text.startswith("# ") and "training.lr=0.2 name=x" in text.splitlines()[0]
    again = parse_spec(yaml.safe_load(text))
    assert again == spec and spec.training.lr == 0.2 and spec.name == "x"
    plain, original = load_with_overrides(SPECS_DIR / "default.yaml", [])
    assert (plain, original) == load_spec(SPECS_DIR / "default.yaml")


def test_cli_validate_with_overrides(capsys, tmp_path):
    assert main(["validate", "seeds=[0]"]) == 0
    assert "1 seeds" in capsys.readouterr().out
    path = str(SPECS_DIR / "pai_cpu.yaml")
    assert (
        main(["validate", path, "pai.methods=[snip]", "seeds=[0,1]", "pai.densities=[0.2,0.1]"])
        == 0
    )
    assert "2 seeds × 1 methods × 2 densities" in capsys.readouterr().out
    assert main(["validate", path, "training.lr=-1"]) == 2
    assert "training.lr: Input should be greater than 0 (got -1)" in capsys.readouterr().err
    assert main(["validate", path, "pai.methodz=[snip]"]) == 2
    assert "nearest: pai.methods" in capsys.readouterr().err
    assert main(["validate", path, str(tmp_path / "second.yaml")]) == 2


# -- grid values typed as printed ----------------------------------------------------------


def test_densities_and_sparsities_match_to_the_digits_typed():
    grid = PAPER2_DENSITIES
    assert grid[-1] == 0.0180143985
    for typed in ("0.01801", "0.018", "0.0180143985", "1.801e-2", "0.02"):
        assert match_grid_value(typed, grid) == 0.0180143985
    assert match_grid_value("0.1074", grid) == 0.1073741824
    assert match_grid_value("98.2", grid, percent=True) == 0.0180143985
    assert match_grid_value("98.20%", grid, percent=True) == 0.0180143985
    assert match_grid_value("36", grid, percent=True) == 0.64
    with pytest.raises(GridValueError) as err:
        match_grid_value("0.0181", grid)
    assert "not in the grid" in str(err.value) and "0.01801" in str(err.value)
    with pytest.raises(GridValueError) as err:
        match_grid_value("0.01", [0.0101, 0.0098, 0.5])
    assert "ambiguous" in str(err.value) and "0.0101" in str(err.value)
    assert "0.0098" in str(err.value)
    with pytest.raises(GridValueError):
        match_grid_value("abc", grid)
    assert match_densities(None, None, grid) is None
    assert match_densities(["0.4096"], ["98.2"], grid) == {0.4096, 0.0180143985}


def test_branch_runs_take_printed_densities(pai_spec_dict, tmp_path):
    pai_spec_dict["pai"].update(methods=["snip"], densities=PAPER2_DENSITIES[-3:])
    spec = parse_spec(pai_spec_dict)
    store = ExperimentStore(str(tmp_path / "exp"))
    for run in pai_grid(spec):
        parent = PaIConfig(experiment=spec.name, spec=spec, **run).run_id
        store.write_artifact(f"runs/{parent}/masks.pt", b"stand-in")
        if run["density"] == 0.0180143985:
            assert "-d0.01801-" in parent
    runs = branch_runs(spec, store, "reinit", densities=["0.01801"])
    assert [r["density"] for r in runs] == [0.0180143985]
    runs = branch_runs(spec, store, "reinit", sparsities=["97.2", "98.2"])
    assert sorted(r["density"] for r in runs) == [0.0180143985, 0.0281474977]
    with pytest.raises(GridValueError):
        branch_runs(spec, store, "reinit", densities=["0.5"])
