"""Searches: which configuration of the searched fields did best, and how much seeds disagree.

A configuration is one set of sampled values; it ran on every seed (and data set, and PaI grid
cell). Its score is the metric its lineages or runs reported last — IMP's at its final round,
a PaI run's at its final epoch — as mean ± std over the seeds that got there. ASHA may stop
some seeds of a configuration early, at a denser network or an earlier epoch, where the metric
is not comparable: the score counts only seeds that finished, and configurations none of whose
seeds finished rank after all the others.
"""

from __future__ import annotations

import math

import pandas as pd

from lotterylab.analysis.experiment import Experiment
from lotterylab.analysis.markdown import table
from lotterylab.analysis.sections import Section

ID_COLUMN = {"imp": "lineage_id", "pai": "run_id"}
# the row's progress, and the spec column holding where a trial ends
PROGRESS = {"imp": ("round", "imp.rounds"), "pai": ("epoch", "training.epochs")}
# what every configuration is compared within: it ran once per seed in each of these
CELLS = {"imp": ["dataset"], "pai": ["dataset", "method", "density", "rounds"]}
SHOWN = 10  # configurations listed per cell in the report


def search_settings(experiment: Experiment) -> tuple[list[str], str, str]:
    """The searched key paths, the metric and its mode (max or min)."""
    search = experiment.spec.get("search") or {}
    return experiment.searched, search.get("metric", "test_accuracy"), search.get("mode", "max")


def final_results(experiment: Experiment) -> pd.DataFrame:
    """One row per lineage (IMP's rows) or run (no branches): the last one it reported."""
    kind = experiment.kind
    if kind == "imp":
        rows = experiment.rounds()
        rows = rows[rows["method"] == "imp"] if not rows.empty else rows
    else:
        rows = experiment.pai_epochs()
        rows = rows[rows["branch"] == ""] if not rows.empty else rows
    if rows.empty:
        return rows
    step, end = PROGRESS[kind]
    last = rows.sort_values(step, kind="stable").groupby(ID_COLUMN[kind], sort=False).tail(1)
    return last.assign(finished=last[step].to_numpy() >= pd.to_numeric(last[end]).to_numpy())


def rank_configurations(
    final: pd.DataFrame, kind: str, searched: list[str], metric: str, mode: str
) -> pd.DataFrame:
    """Per cell and configuration: the final metric over seeds, how far it got, and its rank.

    Columns: the cell (``dataset`` …), ``search.<path>`` of each searched field,
    ``<metric>_mean/_std/_min/_max`` over the seeds that ran to the end (std with ddof=0; over
    every seed's last value when none did), ``n_seeds``, ``n_finished``, ``reached`` (the round
    or epoch its shortest lineage or run got to), ``finished`` (every seed ran to the end),
    ``ids`` and ``rank`` (1 = best in its cell; configurations with a seed that finished first).
    """
    columns = [f"search.{p}" for p in searched]
    keys = CELLS[kind] + columns
    if final.empty:
        return pd.DataFrame(columns=[*keys, "rank"])
    step, _ = PROGRESS[kind]
    final = final.assign(**{metric: pd.to_numeric(final[metric])})
    records = []
    for key, group in final.groupby(keys, sort=False, dropna=False):
        done = group[group["finished"]]
        values = (done if len(done) else group)[metric]
        records.append(
            {
                **dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)),
                f"{metric}_mean": values.mean(),
                f"{metric}_std": values.std(ddof=0),
                f"{metric}_min": values.min(),
                f"{metric}_max": values.max(),
                "n_seeds": group["seed"].nunique(),
                "n_finished": done["seed"].nunique(),
                "reached": group[step].min(),
                "finished": bool(group["finished"].all()),
                "ids": sorted(group[ID_COLUMN[kind]]),
            }
        )
    ranked = pd.DataFrame(records)
    score = ranked[f"{metric}_mean"] * (-1 if mode == "max" else 1)
    ranked = ranked.assign(_score=score.fillna(math.inf), _stopped=ranked["n_finished"] == 0)
    ranked = ranked.sort_values([*CELLS[kind], "_stopped", "_score"], kind="stable")
    ranked["rank"] = ranked.groupby(CELLS[kind], sort=False).cumcount() + 1
    return ranked.drop(columns=["_score", "_stopped"]).reset_index(drop=True)


def search_table(experiment: Experiment) -> pd.DataFrame:
    """The ranked configurations of an experiment's search (empty without a search or rows)."""
    searched, metric, mode = search_settings(experiment)
    if not searched:
        return pd.DataFrame()
    return rank_configurations(final_results(experiment), experiment.kind, searched, metric, mode)


def best_ids(ranked: pd.DataFrame) -> set[str]:
    """Lineage or run ids of the best configuration of every cell."""
    if ranked.empty:
        return set()
    return {i for ids in ranked.loc[ranked["rank"] == 1, "ids"] for i in ids}


def value_text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def search_section(experiment: Experiment, ranked: pd.DataFrame) -> Section:
    searched, metric, mode = search_settings(experiment)
    kind = experiment.kind
    section = Section("Search: best configurations")
    if ranked.empty:
        return section.skip("no finished round or epoch of the search yet")
    search = experiment.spec.get("search") or {}
    step, _ = PROGRESS[kind]
    stopped = ranked[~ranked["finished"]]
    section.lines += [
        f"{search.get('algorithm', 'random')} search over {', '.join(f'`{p}`' for p in searched)}"
        f": {ranked[[f'search.{p}' for p in searched]].drop_duplicates().shape[0]} "
        f"configurations, each on every seed; ranked by the final `{metric}` ({mode}), "
        f"mean ± std over the seeds that ran to the end. {len(stopped)} configuration(s) had "
        "seeds stopped early by the scheduler; those with no finished seed rank last. "
        "The figures below show the best configuration of each cell.",
        "",
    ]
    header = [
        "rank",
        *searched,
        f"{metric} (mean ± std)",
        "min–max",
        "seeds finished",
        f"last {step}",
    ]
    for cell, rows in ranked.groupby(CELLS[kind], sort=False):
        cell = cell if isinstance(cell, tuple) else (cell,)
        names = ", ".join(f"{k} {value_text(v)}" for k, v in zip(CELLS[kind], cell, strict=True))
        section.lines += [f"### {names}", ""]
        body = []
        for row in rows.head(SHOWN).to_dict("records"):
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            body.append(
                [
                    str(row["rank"]),
                    *(value_text(row[f"search.{p}"]) for p in searched),
                    "—" if pd.isna(mean) else f"{mean:.4f} ± {std:.4f}",
                    "—"
                    if pd.isna(mean)
                    else f"{row[f'{metric}_min']:.4f}–{row[f'{metric}_max']:.4f}",
                    f"{row['n_finished']}/{row['n_seeds']}",
                    f"{row['reached']}" + ("" if row["finished"] else " (stopped early)"),
                ]
            )
        section.lines += table(header, body)
        if len(rows) > SHOWN:
            section.lines += [f"{len(rows) - SHOWN} more configuration(s) not shown.", ""]
    return section


def only_ids(rows: pd.DataFrame, column: str, ids: set[str]) -> pd.DataFrame:
    """The rows of these lineages or runs (all rows when there is no selection)."""
    if not ids or rows.empty or column not in rows.columns:
        return rows
    return rows[rows[column].isin(ids)].reset_index(drop=True)
