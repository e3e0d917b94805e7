"""Result rows as one DataFrame: analysis reads the experiment's tables only through here."""

from __future__ import annotations

import pandas as pd

from lotterylab.platform.store.experiment_store import ExperimentStore
from lotterylab.platform.store.tables import ROUNDS_TABLE

ROW_ORDER = ["dataset", "method", "seed", "round", "lineage_id"]


def load_rounds(store: ExperimentStore) -> pd.DataFrame:
    """Every row of the ``rounds`` table, sorted, with ``layer_sparsity`` as a dict."""
    frame = store.read_table(ROUNDS_TABLE).to_pandas(maps_as_pydicts="strict")
    return frame.sort_values(ROW_ORDER, ignore_index=True)
