"""An experiment's report (figures and Markdown), written back into its store so it sits next to
the results on any fsspec URI, local disk or object store alike.

One experiment gets the figures of its kind (paper 1 for ``imp``, paper 2 for ``pai``) under its
own ``figures/``; several experiments get one set of comparison figures, their methods labelled
``<experiment>/<method>``. Figures whose inputs are not in the store yet are skipped with a note
in ``report.md``; a corrupt artifact still raises ``StoreError``.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Sequence

import pandas as pd

from lotterylab.analysis.aggregate import aggregate_over_seeds
from lotterylab.analysis.branches import branch_sections
from lotterylab.analysis.experiment import (
    Experiment,
    ExperimentSet,
    as_store,
    open_experiment,
    relabel,
)
from lotterylab.analysis.figures import MaskPanel, ordered_methods
from lotterylab.analysis.markdown import percent, spread
from lotterylab.analysis.paper1 import (
    SUMMARY_VALUES,
    accuracy_sections,
    all_masks_section,
    fig1_section,
    fig2_section,
    fig3_section,
    fig4_section,
    fig5_section,
    mask_panels,
)
from lotterylab.analysis.paper2 import pai_sections
from lotterylab.analysis.searches import best_ids, only_ids, search_section, search_table
from lotterylab.analysis.sections import Section
from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.manifest import check_complete, describe_incomplete, incomplete
from lotterylab.platform.store.tables import IMP_BRANCHES_TABLE

FIGURES = "figures"
COMPARE = "figures/compare"
REPORT = "report.md"
SUMMARY = "summary.md"

StoreLike = str | ExperimentStore


def write_report(
    store_or_stores: StoreLike | Sequence[StoreLike],
    out: StoreLike | None = None,
    partial: bool = False,
) -> list[str]:
    """Draw the figures and write ``report.md`` (and ``summary.md`` for IMP); return URIs.

    One store: its figures go under its own ``figures/``. Several: comparison figures go to
    ``out`` (a store or URI, files directly under it), by default the first store's
    ``figures/compare/``. ``out`` also redirects a single experiment's figures.

    An experiment whose lineages or runs miss files they had written is refused
    (:class:`IncompleteResultsError`, naming them), so earlier figures are not replaced by
    ones of fewer rounds; with ``partial`` the figures are drawn from what is there and the
    report and summary say what is missing.
    """
    if isinstance(store_or_stores, str | ExperimentStore):
        targets = [store_or_stores]
    else:
        targets = list(store_or_stores)
    if not targets:
        raise ValueError("write_report: give at least one experiment store or URI")
    experiments = [open_experiment(t) for t in targets]
    for experiment in experiments:
        if not experiment.tables() and not experiment.spec:
            raise ValueError(f"no results in {experiment.uri}: has the experiment run?")
    holes = {e.uri: incomplete(e.store) for e in experiments}
    if not partial:
        for experiment in experiments:
            check_complete(experiment.store, holes[experiment.uri])
    warning = partial_note(experiments, holes)
    if len(experiments) == 1:
        experiment = experiments[0]
        destination = (as_store(out), "") if out is not None else (experiment.store, FIGURES)
        sections = experiment_sections(experiment)
        header = experiment_header(experiment) + warning
        extra = [
            (name, "\n".join(warning).encode() + data) for name, data in summary_file(experiment)
        ]
    else:
        destination = (as_store(out), "") if out is not None else (experiments[0].store, COMPARE)
        group = ExperimentSet(experiments)
        sections = comparison_sections(group)
        header = comparison_header(group) + warning
        extra = []
    return write_sections(destination, sections, header, extra)


def partial_note(experiments: list[Experiment], holes: dict[str, dict]) -> list[str]:
    """Lines that say, at the top of a report drawn with ``partial``, what it lacks."""
    lines = []
    for experiment in experiments:
        if holes[experiment.uri]:
            lines += [
                f"> **Partial results**: {len(holes[experiment.uri])} lineages or runs of "
                f"`{experiment.uri}` miss files they had written; the figures leave them out "
                f"where their rows are gone. `lotterylab resume {experiment.uri}` rebuilds them.",
                "",
                *(
                    f"    {line.strip()}"
                    for line in describe_incomplete(holes[experiment.uri]).splitlines()
                ),
                "",
            ]
    return lines


def write_sections(
    destination: tuple[ExperimentStore, str],
    sections: list[Section],
    header: list[str],
    extra: list[tuple[str, bytes]],
) -> list[str]:
    store, folder = destination
    written = []
    for section in sections:
        if section.draw is None or section.png is None:
            continue
        buffer = io.BytesIO()
        section.draw(buffer)
        written.append(write_file(store, folder, section.png, buffer.getvalue()))
    for name, data in extra:
        written.append(write_file(store, folder, name, data))
    text = "\n".join(header + [line for s in sections for line in s.markdown()])
    written.append(write_file(store, folder, REPORT, text.encode()))
    return written


def write_file(store: ExperimentStore, folder: str, name: str, data: bytes) -> str:
    rel = posixpath.join(folder, name) if folder else name
    store.write_bytes(rel, data)
    return store.url(rel)


# -- which figures ---------------------------------------------------------------------------
def experiment_sections(experiment: Experiment) -> list[Section]:
    """The figures of the experiment's kind; a search first ranks its configurations, and the
    figures then show the best one of each cell (data set, or PaI method × density)."""
    sections, best = [], set()
    if experiment.searched:
        ranked = search_table(experiment)
        sections.append(search_section(experiment, ranked))
        best = best_ids(ranked)
    if experiment.kind == "pai":
        epochs, masks = (
            pai_rows(table, best) for table in (experiment.pai_epochs(), experiment.pai_masks())
        )
        return sections + pai_sections(epochs, masks)
    rounds, kurtosis, cavity = (
        only_ids(table, "lineage_id", best)
        for table in (experiment.rounds(), experiment.kurtosis(), experiment.cavity())
    )
    sections += imp_sections(rounds, kurtosis, cavity, experiment)
    if IMP_BRANCHES_TABLE in experiment.tables():
        sections += branch_sections(experiment.rounds(), experiment.imp_branches())
    return sections


def pai_rows(rows: pd.DataFrame, runs: set[str]) -> pd.DataFrame:
    """Rows of these runs and of their sanity-check branches (all rows without a selection)."""
    if not runs or rows.empty:
        return rows
    keep = rows["run_id"].isin(runs) | rows["parent_id"].isin(runs)
    return rows[keep].reset_index(drop=True)


def imp_sections(
    rounds: pd.DataFrame,
    kurtosis: pd.DataFrame,
    cavity: pd.DataFrame,
    experiment: Experiment | None,
) -> list[Section]:
    """Paper 1's figures; the image figures (masks, components, examples) need one experiment."""
    sections: list[Section] = []
    if rounds.empty:
        sections.append(Section("Accuracy and RF width vs sparsity").skip("no rounds table yet"))
    else:
        sections += accuracy_sections(rounds)
    if experiment is not None:
        if rounds.empty:
            sections.append(Section("Fig. 1 — first-layer masks").skip("no rounds table yet"))
        else:
            sections.append(all_masks_section(experiment, rounds))
            sections.append(fig1_section(experiment, rounds))
        sections.append(fig2_section(experiment))
    sections.append(fig3_section(experiment, rounds))
    sections.append(fig4_section(rounds, kurtosis))
    sections.append(fig5_section(cavity))
    return sections


def comparison_sections(group: ExperimentSet) -> list[Section]:
    sections: list[Section] = []
    if "imp" in group.kinds:
        rounds, kurtosis, cavity = (
            relabel(group.table(t)) for t in ("rounds", "kurtosis", "cavity")
        )
        sections += imp_sections(rounds, kurtosis, cavity, experiment=None)
    if "pai" in group.kinds:
        sections += pai_sections(relabel(group.pai_epochs()), relabel(group.pai_masks()))
    return sections


def experiment_header(experiment: Experiment) -> list[str]:
    tables = experiment.tables()
    lines = [
        f"# Report of experiment `{experiment.name}` ({experiment.kind})",
        "",
        f"Results at `{experiment.uri}`; tables: {', '.join(tables) or 'none yet'}.",
        "Numbers are statistics over seeds: mean ± std (ddof=0) or mean (min–max); intervals "
        "are 95 % t intervals of the mean, and figure bands draw them.",
        "",
    ]
    if not experiment.spec:
        lines += ["> note: no `spec.resolved.json` in the store; spec columns are absent.", ""]
    return lines


def comparison_header(group: ExperimentSet) -> list[str]:
    lines = ["# Comparison of experiments", ""]
    lines += [
        f"- `{label}` ({e.kind}): `{e.uri}`"
        for label, e in zip(group.labels, group.experiments, strict=True)
    ]
    lines += [
        "",
        "Methods are labelled `<experiment>/<method>`; masks, components and example images "
        "are in each experiment's own report.",
        "",
    ]
    return lines


# -- summary.md (the walking skeleton's per-data-set table) -------------------------------------
def summary_file(experiment: Experiment) -> list[tuple[str, bytes]]:
    if experiment.kind != "imp":
        return []
    rounds = experiment.table("rounds", with_spec=False)
    if experiment.searched:  # the best configuration of each data set, as in the figures
        rounds = only_ids(rounds, "lineage_id", best_ids(search_table(experiment)))
    if rounds.empty:
        return []
    summary = aggregate_over_seeds(rounds, SUMMARY_VALUES)
    return [(SUMMARY, summary_markdown(experiment.store, rounds, summary).encode())]


def first_layer_mask_panels(store: ExperimentStore, rounds: pd.DataFrame) -> list[MaskPanel]:
    """First-layer masks in force at each shown lineage's last round, per method."""
    return mask_panels(open_experiment(store), rounds)[0]


SUMMARY_COLUMNS = (
    "method",
    "round",
    "sparsity",
    "first-layer sparsity",
    "RF width median (px)",
    "test accuracy",
    "seeds",
)


def summary_markdown(store: ExperimentStore, rounds: pd.DataFrame, summary: pd.DataFrame) -> str:
    datasets = sorted(summary["dataset"].unique())
    lines = [
        f"# Experiment `{store.name}`",
        "",
        f"{rounds['lineage_id'].nunique()} lineages on {', '.join(datasets)}; "
        f"results at `{store.uri}`.",
        "Values are the mean over seeds ± std (ddof=0); RF widths give the min–max over seeds "
        "in brackets.",
        "",
    ]
    for dataset in datasets:
        lines += dataset_table(dataset, summary[summary["dataset"] == dataset])
    return "\n".join(lines)


def dataset_table(dataset: str, rows: pd.DataFrame) -> list[str]:
    lines = [
        f"## {dataset}",
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    for method in ordered_methods(rows["method"].unique()):
        for row in rows[rows["method"] == method].sort_values("round").to_dict("records"):
            lines.append(summary_row(row))
    return lines + [""]


def summary_row(row: dict) -> str:
    cells = (
        row["method"],
        str(row["round"]),
        percent(row["sparsity_mean"]),
        percent(row["sparsity_first_layer_mean"]),
        spread(row, "rf_width_median", digits=2, with_range=True),
        spread(row, "test_accuracy", digits=3, with_range=False),
        str(row["n_seeds"]),
    )
    return "| " + " | ".join(cells) + " |"
