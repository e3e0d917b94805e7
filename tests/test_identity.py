"""The one identity rule: new fields with neutral defaults rename nothing; derived data sets
carry their source; both kinds of run follow it."""

from __future__ import annotations

import copy

from pydantic import Field

from lotterylab.platform.imp.lineage import LineageConfig
from lotterylab.platform.pai.run import PaIConfig
from lotterylab.platform.spec import IMPSpec, TrainingSpec, parse_spec
from lotterylab.platform.store.identity import (
    PINNED,
    data_identity,
    section_identity,
)


class LaterTraining(TrainingSpec):
    label_smoothing: float = Field(0.0, description="a field added after ids were pinned")


def test_a_field_added_with_its_default_renames_nothing():
    pinned = PINNED["imp.training"]
    base = section_identity(TrainingSpec(), pinned)
    assert section_identity(LaterTraining(), pinned) == base
    assert section_identity(LaterTraining(label_smoothing=0.1), pinned) == {
        **base,
        "label_smoothing": 0.1,
    }


def test_pinned_fields_hash_at_any_value_and_later_ones_only_off_default():
    identity = section_identity(IMPSpec(), PINNED["imp.imp"])
    assert set(identity) == set(PINNED["imp.imp"])  # measure_* hold their defaults
    assert "measure_samples" in section_identity(IMPSpec(measure_samples=10), PINNED["imp.imp"])
    # a section of a plugin (nothing pinned) hashes its tag and what differs from defaults
    assert section_identity(TrainingSpec(lr=0.5)) == {"lr": 0.5}


def test_derived_data_sets_carry_their_sources_identity(tiny_spec_dict, pai_spec_dict):
    spec = parse_spec(tiny_spec_dict)
    clone = data_identity(spec.datasets, "nlgp_clone")
    assert clone["of"] == data_identity(spec.datasets, "nlgp")
    changed = copy.deepcopy(tiny_spec_dict)
    changed["datasets"][0]["xi"] = [1.0, 4.0]
    other = parse_spec(changed)
    before = LineageConfig("x", "nlgp_clone", 0, spec).lineage_id
    assert LineageConfig("x", "nlgp_clone", 0, other).lineage_id != before
    pai_spec_dict["datasets"].append(
        {"name": "clone", "type": "gaussian_clone", "of": "nlgp3", "seed": 1}
    )
    pai = parse_spec(pai_spec_dict)
    pai_spec_dict["datasets"][0]["gain"] = 2.0
    moved = parse_spec(pai_spec_dict)
    ids = [PaIConfig("x", "clone", 0, "snip", 0.2, 1, s).run_id for s in (pai, moved)]
    assert ids[0] != ids[1]
