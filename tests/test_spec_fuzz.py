"""No bad spec reaches Ray: many specs, each a valid tiny spec with one field mutated (wrong
types, out-of-range numbers, inf/nan, unknown keys, cross-field violations), are refused by
``lotterylab validate`` with exit code 2 and the mutated key path in the message."""

from __future__ import annotations

import copy
import math
import random
import re
import types
from typing import Annotated, Literal, Union, get_args, get_origin

import annotated_types as at
import pytest
import ray
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lotterylab.cli import EXIT_BAD_INPUT, main
from lotterylab.platform.spec import ExperimentSpec, parse_spec

MUTATIONS_PER_BASE = 220  # drawn from every candidate, deterministically


# -- walking a spec dump alongside its pydantic types ------------------------------------------
def constraints_of(annotation) -> tuple[object, list]:
    """The bare type and the constraints (annotated-types objects) wrapped around it."""
    found = []
    while get_origin(annotation) is Annotated:
        annotation, *extras = get_args(annotation)
        for extra in extras:
            found += extra.metadata if isinstance(extra, FieldInfo) else [extra]
    return annotation, found


def members(annotation) -> list:
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def pick_model(options: list, value: dict):
    models = [o for o in options if isinstance(o, type) and issubclass(o, BaseModel)]
    for model in models:
        for name, info in model.model_fields.items():
            if get_origin(info.annotation) is Literal and value.get(name) in get_args(
                info.annotation
            ):
                return model
    return models[0] if len(models) == 1 else None


def leaves(model: type[BaseModel], dump: dict, path: str = ""):
    """(key path, value, bare type, constraints) of every field of a dump, nested ones too."""
    for name, info in model.model_fields.items():
        where = f"{path}.{name}" if path else name
        yield from field_leaves(info.annotation, info.metadata, dump.get(name), where)


def field_leaves(annotation, metadata: list, value, path: str):
    bare, inner = constraints_of(annotation)
    options = [constraints_of(m) for m in members(bare)]
    constraints = [*metadata, *inner] + [c for _, cs in options for c in cs]
    types_ = [t for t, _ in options]
    yield path, value, types_, constraints
    if isinstance(value, dict):
        model = pick_model(types_, value)
        if model is not None:
            yield from leaves(model, value, path)
    if isinstance(value, list):
        sequences = [t for t in types_ if get_origin(t) in (list, tuple)]
        if len(sequences) == 1:
            args = get_args(sequences[0])
            for i, item in enumerate(value):
                yield from field_leaves(args[0] if args else object, [], item, f"{path}.{i}")


# -- mutations ---------------------------------------------------------------------------------
def set_path(spec: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        spec = spec[int(key)] if isinstance(spec, list) else spec[key]
    if isinstance(spec, list):
        spec[int(last)] = value
    else:
        spec[last] = value


def out_of_range(value, constraints: list) -> list:
    step = 1 if isinstance(value, int) else 0.5
    bad = []
    for c in constraints:
        if isinstance(c, at.Ge):
            bad.append(c.ge - step)
        elif isinstance(c, at.Gt):
            bad.append(c.gt)
        elif isinstance(c, at.Le):
            bad.append(c.le + step)
        elif isinstance(c, at.Lt):
            bad.append(c.lt)
    return bad


def candidates(path: str, value, kinds: list, constraints: list) -> list[tuple[str, object]]:
    """(what, bad value) replacements of one field, each refused by the field itself."""
    literal = [t for t in kinds if get_origin(t) is Literal]
    if isinstance(value, bool):
        return [("not a boolean", "maybe"), ("a number for a boolean", 2), ("a list", [True])]
    if isinstance(value, int):
        found = [("a word", "abc"), ("a fraction", 1.5), ("a boolean", True), ("a list", [1])]
        return found + [("out of range", v) for v in out_of_range(value, constraints)]
    if isinstance(value, float):
        found = [("a word", "abc"), ("a boolean", False), ("a mapping", {"a": 1.0})]
        found += [("inf", math.inf), ("-inf", -math.inf), ("nan", math.nan)]
        return found + [("out of range", v) for v in out_of_range(value, constraints)]
    if isinstance(value, str):
        found = [("a list", ["x"])]
        if int not in kinds:  # a field like run.batch_lineages takes a word or a number
            found.insert(0, ("a number for text", 5))
        if literal:
            found.append(("not one of the allowed words", "zzz"))
        if any(getattr(c, "pattern", None) for c in constraints):
            found.append(("against the name pattern", "bad name/"))
        return found
    if isinstance(value, list):
        found = [("a word for a list", "abc"), ("a number for a list", 7)]
        if any(isinstance(c, at.MinLen) and c.min_length > 0 for c in constraints):
            found.append(("an empty list", []))
        return found
    if isinstance(value, dict):
        return [("a number for a section", 3), ("a word for a section", "abc")]
    return [("a mapping for an unset field", {"bogus_key": 1})]  # None: an optional field


def field_mutations(base: dict) -> list[tuple[str, dict, str]]:
    resolved = parse_spec(base).model_dump(mode="json")
    found = []
    for path, value, kinds, constraints in leaves(ExperimentSpec, resolved):
        for what, bad in candidates(path, value, kinds, constraints):
            spec = copy.deepcopy(resolved)
            set_path(spec, path, bad)
            found.append((f"{path}: {what} ({bad!r})", spec, path))
        if isinstance(value, dict) and value:  # a typo in a section
            spec = copy.deepcopy(resolved)
            set_path(spec, f"{path}.bogus_key", 1)
            found.append((f"{path}: unknown key", spec, f"{path}.bogus_key"))
    spec = copy.deepcopy(resolved)
    spec["bogus_key"] = 1
    found.append(("top level: unknown key", spec, "bogus_key"))
    return found


def cross_field(base: dict, changes: list[tuple[str, object, str]]) -> list[tuple[str, dict, str]]:
    resolved, found = parse_spec(base).model_dump(mode="json"), []
    for path, value, named in changes:
        spec = copy.deepcopy(resolved)
        set_path(spec, path, value)
        found.append((f"{path} = {value!r} (cross-field)", spec, named))
    return found


VOC = {"name": "voc", "type": "voc", "root": "/data/voc"}
CIFAR = {"name": "cifar", "type": "cifar10", "root": "/data/cifar"}


def imp_cross_field(base: dict) -> list[tuple[str, dict, str]]:
    return cross_field(
        base,
        [
            ("training.batch_size", 401, "training.batch_size"),
            ("training.rewind_step", 60, "training.rewind_step"),
            ("training.lr_drops", [60], "training.lr_drops"),
            ("training.lr_drops", [30, 10], "training.lr_drops"),
            ("training.optimizer", "nesterov", "training.momentum"),
            ("training.epochs", 3, "training.epochs"),
            ("datasets.1.of", "cifar", "datasets.1.of"),
            ("datasets.1.of", "nlgp_clone", "datasets.1.of"),
            ("datasets.1.name", "nlgp", "datasets"),
            ("datasets.0.xi", [1.0] * 401, "datasets.0.n_train"),
            ("datasets.0.seed", 2**64, "datasets.0.seed"),
            ("datasets.1", {"name": "c", "type": "gaussian_clone", "of": "v"}, "datasets.1.of"),
            ("datasets", [VOC], "datasets.0.type"),
            ("datasets", [{**CIFAR, "n_train": 40}], "training.batch_size"),
            ("seeds", [1, 1], "seeds"),
            ("model", {"name": "deeplabv3_resnet50"}, "model.name"),
            ("kind", "pai", "imp"),
            ("analysis.components", {"source": "nope"}, "analysis.components.source"),
            (
                "analysis.components",
                {"n_components": 17, "patch_size": 4},
                "analysis.components.n_components",
            ),
            ("analysis.components", {"seed": -1}, "analysis.components.seed"),
            ("resources.gpu", 1.5, "resources.gpu"),
            ("resources.cpu", 0.00001, "resources.cpu"),
            ("search", {"space": {"training.lr": {"uniform": [-1, 1]}}}, "search.space.training"),
            ("search", {"space": {"model.hidden": {"choice": [1]}}}, "search.space.model.hidden"),
            (
                "search",
                {"space": {"training.rewind_step": {"randint": [0, 61]}}},
                "search.space.training.rewind_step",
            ),
            ("search", {"space": {"training.lr": {"loguniform": [0, 1]}}}, "search.space"),
        ],
    )


def imp_resnet_cross_field(base: dict) -> list[tuple[str, dict, str]]:
    resnet = {**base, "model": {"name": "resnet20", "width": 4}}
    return cross_field(resnet, [("imp.baselines", ["oneshot", "cavity"], "imp.baselines")])


def pai_cross_field(base: dict) -> list[tuple[str, dict, str]]:
    return cross_field(
        base,
        [
            ("training.epochs", None, "training.epochs"),
            ("training.lr_drops", [2], "training.lr_drops"),
            ("training.batch_size", 241, "training.batch_size"),
            ("pai.scoring_batch_size", 241, "pai.scoring_batch_size"),
            ("pai.scoring_batches", 5, "pai.scoring_batches"),
            ("pai.methods", ["snip", "snip"], "pai.methods"),
            ("pai.densities", [0.5, 0.5], "pai.densities"),
            ("model", {"name": "deeplabv3_resnet50"}, "datasets.0.type"),
            ("datasets.0", VOC, "datasets.0.type"),
            ("kind", "imp", "pai"),
            (
                "analysis.components",
                {"n_components": 200, "source": "nlgp3"},
                "analysis.components.n_components",
            ),
            (
                "search",
                {"space": {"pai.hparams.snip.batch_norm": {"choice": ["eval", "train"]}}},
                "search.space.pai.hparams.snip.batch_norm",
            ),
            (
                "search",
                {"space": {"training.lr": {"uniform": [0.01, 0.1]}}, "metric": "test_miou"},
                "search.metric",
            ),
        ],
    )


def sampled(mutations: list, seed: int) -> list:
    rng = random.Random(seed)
    return rng.sample(mutations, min(MUTATIONS_PER_BASE, len(mutations)))


@pytest.fixture
def bad_specs(tiny_spec_dict, pai_spec_dict) -> list[tuple[str, dict, str]]:
    return (
        sampled(field_mutations(tiny_spec_dict), seed=0)
        + sampled(field_mutations(pai_spec_dict), seed=1)
        + imp_cross_field(tiny_spec_dict)
        + imp_resnet_cross_field(tiny_spec_dict)
        + pai_cross_field(pai_spec_dict)
    )


def names(message: str, path: str) -> bool:
    """Whether a message names a key path as a word of its own (a deeper path counts)."""
    return re.search(rf"(?:^|\s){re.escape(path)}(?:[.:\s]|$)", message, re.M) is not None


def test_the_bases_are_valid(tiny_spec_dict, pai_spec_dict, write_spec):
    for base in (tiny_spec_dict, pai_spec_dict):
        assert main(["validate", write_spec(parse_spec(base).model_dump(mode="json"))]) == 0


def test_every_mutated_spec_is_refused_with_its_key_path(bad_specs, tmp_path, capsys):
    assert not ray.is_initialized()
    assert len(bad_specs) > 450
    path = tmp_path / "bad.yaml"
    for what, spec, named in bad_specs:
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        code = main(["validate", str(path)])
        error = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT, f"{what}: accepted"
        assert names(error, named), f"{what}: the message does not name {named}:\n{error}"
    assert not ray.is_initialized()


def test_run_refuses_bad_specs_before_starting_ray(bad_specs, tmp_path, capsys):
    rng = random.Random(2)
    for what, spec, named in rng.sample(bad_specs, 6):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        assert main(["run", str(path), "--storage", str(tmp_path / "results")]) == 2, what
        assert names(capsys.readouterr().err, named), what
        assert not ray.is_initialized()
    assert not (tmp_path / "results").exists()
