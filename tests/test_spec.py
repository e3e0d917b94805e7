import subprocess
import sys

import pytest

from lotterylab.platform.imp.lineage import LineageConfig
from lotterylab.platform.spec import SpecError, load_spec, parse_spec
from lotterylab.platform.store.ids import canonical_json, lineage_id, short_hash


def test_default_spec_is_valid_and_reaches_95_percent():
    spec, text = load_spec("experiments/default.yaml")
    assert spec.name == "default"
    assert [d.name for d in spec.datasets] == ["nlgp", "nlgp_clone"]
    assert spec.seeds == [0, 1, 2]
    assert "name: default" in text
    first_layer_density = (1 - spec.imp.fraction) ** spec.imp.rounds
    assert first_layer_density <= 0.05


@pytest.mark.parametrize(
    "change, path, fragment",
    [
        (lambda s: s["imp"].update(fraction=1.5), "imp.fraction", "1.5"),
        (lambda s: s["imp"].update(fraction=0.0), "imp.fraction", "0.0"),
        (lambda s: s["imp"].update(rounds=0), "imp.rounds", "0"),
        (lambda s: s["imp"].update(baselines=["oneshot", "magic"]), "imp.baselines.1", "magic"),
        (lambda s: s["imp"].update(treshold="layer"), "imp.treshold", "unknown key"),
        (lambda s: s["datasets"][0].update(type="mnist"), "datasets.0", "mnist"),
        (lambda s: s["datasets"][1].update(of="cifar"), "datasets.1.of", "cifar"),
        (lambda s: s["model"].update(name="resnet"), "model.name", "resnet"),
        (lambda s: s["model"].update(hidden="wide"), "model.hidden", "wide"),
        (lambda s: s["training"].update(rewind_step=60), "training", "rewind_step (60)"),
        (lambda s: s.update(seeds=[1, 1]), "seeds", "[1, 1]"),
        (lambda s: s.update(name="bad/name"), "name", "bad/name"),
    ],
)
def test_bad_values_name_the_key_path_and_value(tiny_spec_dict, change, path, fragment):
    change(tiny_spec_dict)
    with pytest.raises(SpecError) as info:
        parse_spec(tiny_spec_dict, "spec.yaml")
    message = str(info.value)
    assert "spec.yaml" in message
    assert f"  {path}" in message
    assert fragment in message


def test_cli_validate_bad_spec_exits_2_without_starting_ray(tiny_spec_dict, write_spec):
    tiny_spec_dict["imp"]["fraction"] = 1.5
    path = write_spec(tiny_spec_dict)
    code = (
        "import sys; from lotterylab.cli import main; rc = main(sys.argv[1:]); "
        "print('ray-imported' if 'ray' in sys.modules else 'no-ray'); sys.exit(rc)"
    )
    for command in (["validate", path], ["run", path]):
        proc = subprocess.run(
            [sys.executable, "-c", code, *command], capture_output=True, text=True
        )
        assert proc.returncode == 2, proc.stderr
        assert "imp.fraction" in proc.stderr and "1.5" in proc.stderr
        assert proc.stdout.strip() == "no-ray"


def test_cli_validate_good_spec(tiny_spec_dict, write_spec):
    from lotterylab.cli import main

    assert main(["validate", write_spec(tiny_spec_dict)]) == 0


def test_missing_spec_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read experiment spec .*nope.yaml"):
        load_spec(tmp_path / "nope.yaml")


def test_canonical_json_is_order_and_format_stable():
    assert canonical_json({"b": 0.1 + 0.2, "a": [1, True]}) == '{"a":[1,true],"b":"0.3"}'
    assert short_hash({"x": 1, "y": 2}) == short_hash({"y": 2, "x": 1})


PINNED_SPEC = {
    "name": "pinned",
    "seeds": [0, 2],
    "datasets": [
        {"name": "nlgp", "type": "nlgp", "grid": 16, "xi": [1.0, 3.0], "gain": 3.0},
        {"name": "nlgp_clone", "type": "gaussian_clone", "of": "nlgp"},
    ],
    "model": {"hidden": [256, 256]},
    "training": {"batch_size": 100, "steps": 2000, "rewind_step": 20},
    "imp": {"rounds": 9, "fraction": 0.3},
}


def test_lineage_ids_are_pinned():
    """Renaming or reordering spec fields must not orphan stored results."""
    spec = parse_spec(PINNED_SPEC)
    ids = {
        (d, s): LineageConfig("pinned", d, s, spec).lineage_id
        for d in ("nlgp", "nlgp_clone")
        for s in (0, 2)
    }
    assert ids == {
        ("nlgp", 0): "imp-fcn-nlgp-c5ceaae1-s0",
        ("nlgp", 2): "imp-fcn-nlgp-c5ceaae1-s2",
        ("nlgp_clone", 0): "imp-fcn-nlgp_clone-c8b56a00-s0",
        ("nlgp_clone", 2): "imp-fcn-nlgp_clone-c8b56a00-s2",
    }
    # name, storage, seeds list and resources are not part of a lineage's identity
    other = parse_spec(
        PINNED_SPEC | {"name": "x", "storage": "s3://b", "seeds": [2], "resources": {"cpu": 2}}
    )
    assert LineageConfig("x", "nlgp", 2, other).lineage_id == ids[("nlgp", 2)]
    # but the computation is
    changed = parse_spec(PINNED_SPEC | {"imp": {"rounds": 9, "fraction": 0.2}})
    assert LineageConfig("x", "nlgp", 2, changed).lineage_id != ids[("nlgp", 2)]
    assert lineage_id("imp", "fcn", "d", {"a": 1}, 3).endswith("-s3")
