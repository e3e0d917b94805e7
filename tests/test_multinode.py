"""Multi-node behaviour on several raylets of this machine (``ray.cluster_utils.Cluster``):
where trials run, a lineage or a PaI run surviving the loss of its node, and data sets
reaching each node once.

One cluster serves the module: a head that only drives (no CPUs) and two workers of two CPUs.
The tests that remove a worker add a fresh one first, so each starts with two workers.
"""

from __future__ import annotations

import copy
import json
import pickle
import tempfile
import threading
import time
from collections import Counter

import pytest
import torch
from conftest import TINY_SPEC
from ray._private.internal_api import node_stats
from ray.cluster_utils import Cluster

from lotterylab.cluster.launch import run_experiment
from lotterylab.platform.data.registry import build_dataset, build_datasets
from lotterylab.platform.imp import masks as mk
from lotterylab.platform.imp.lineage import IMPLineage, LineageConfig
from lotterylab.platform.pai.run import PaIConfig, PaIRun, pai_grid
from lotterylab.platform.spec import parse_spec
from lotterylab.platform.store.experiment_store import ExperimentStore, StoreError
from lotterylab.platform.store.trial_states import STATES, read_state, run_folder

WORKERS = 2
WORKER_CPUS = 2
IMP_METHODS = ("imp", "oneshot", "random")
TRAINABLE = "Trainable"  # how the class name Ray records for a Tune trial actor ends


@pytest.fixture(scope="module")
def cluster(s3_server):
    """Head plus two workers; started after the S3 server so every raylet sees its endpoint."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        add_workers(cluster)
        yield cluster
    finally:
        cluster.shutdown()


def add_workers(cluster: Cluster) -> None:
    while len(cluster.worker_nodes) < WORKERS:
        cluster.add_node(num_cpus=WORKER_CPUS)
    cluster.wait_for_nodes()


# -- where trials ran -------------------------------------------------------------------------
def actor_nodes(cluster: Cluster) -> dict[int, str]:
    """Process id → node id of every trial actor the cluster has run, dead ones included."""
    return {
        actor["Pid"]: actor["Address"]["NodeID"]
        for actor in cluster.global_state.actor_table(None).values()
        if actor["ActorClassName"].endswith(TRAINABLE) and actor["Pid"]
    }


def trial_results(store: ExperimentStore) -> dict[str, list[dict]]:
    """Tune's result rows of every trial of an experiment, in the order they were reported."""
    results = {}
    for trial in (n for n in store.list("") if n.startswith("trial-")):
        text = store.read_bytes(f"{trial}/result.json").decode()
        results[trial] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return results


def nodes_of(rows: list[dict], nodes: dict[int, str]) -> list[str]:
    """The nodes a trial ran on, in order, from the process id Tune records with each result."""
    ran_on = []
    for row in rows:
        node = nodes[row["pid"]]
        if not ran_on or ran_on[-1] != node:
            ran_on.append(node)
    return ran_on


def created_bytes(cluster: Cluster) -> dict[str, int]:
    """Bytes each worker node's object store has ever created, pulled copies included."""
    return {
        node.node_id: node_stats(
            node.node_ip_address, node.node_manager_port, include_memory_info=False
        ).store_stats.cumulative_created_bytes
        for node in cluster.worker_nodes
    }


class NodeRemover(threading.Thread):
    """Removes the worker node that runs the (only) live trial once ``ready()`` holds, and
    keeps what ``snapshot()`` saw just before."""

    # the bound is a safety net for a run that never starts a trial, not a deadline
    def __init__(self, cluster: Cluster, ready, snapshot, timeout_s: float = 900.0):
        super().__init__(daemon=True)
        self.cluster, self.ready, self.snapshot = cluster, ready, snapshot
        self.timeout_s = timeout_s
        self.removed: str | None = None
        self.seen = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test after the run
            self.error = exc

    def _run(self) -> None:
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            node = self._node_of_live_trial() if self.ready() else None
            if node is not None:
                self.seen = self.snapshot()
                self.removed = node.node_id
                self.cluster.remove_node(node)
                return
            time.sleep(0.1)

    def _node_of_live_trial(self):
        live = {
            actor["Address"]["NodeID"]
            for actor in self.cluster.global_state.actor_table(None).values()
            if actor["ActorClassName"].endswith(TRAINABLE) and actor["State"] == "ALIVE"
        }
        nodes = [n for n in self.cluster.worker_nodes if n.node_id in live]
        return nodes[0] if len(nodes) == 1 else None


def saved_step(store: ExperimentStore) -> int:
    """The newest round or epoch whose state the experiment's trials have stored (-1: none)."""
    steps = [
        int(name.removeprefix("step-").removesuffix(".pt"))
        for folder in ("lineages", "runs")
        for trial in store.list(folder)
        for name in store.list(f"{folder}/{trial}/{STATES}")
        if name.endswith(".pt") and store.exists(f"{folder}/{trial}/{STATES}/{name}.sha256")
    ]
    return max(steps, default=-1)


def redone(rows: list[dict], key: str, written: int) -> tuple[int, int]:
    """(steps computed twice, first step after the restart) from Tune's results and the last
    step whose rows were written when the node went: the first process was still inside that
    step when it had not reported it yet, else inside the next one."""
    restart = next(i for i, row in enumerate(rows) if i and row["iterations_since_restore"] == 1)
    last_reported, first_after = rows[restart - 1][key], rows[restart][key]
    last_begun = written if written > last_reported else written + 1
    return last_begun - first_after + 1, first_after


# -- placement and data transfer ----------------------------------------------------------------
@pytest.fixture(scope="module")
def spread_run(cluster, tmp_path_factory):
    """Four IMP lineages on two workers of two CPUs each, with the nodes' object-store counters."""
    add_workers(cluster)
    data = copy.deepcopy(TINY_SPEC)
    data.update(name="spread")
    # 2.5 MB of images in all: large next to anything else a trial sends through the object store
    data["datasets"][0].update(grid=16, n_train=1000, n_test=200)
    data["imp"]["rounds"] = 1
    spec = parse_spec(data)
    before = created_bytes(cluster)
    outcome = run_experiment(
        spec, "name: spread\n", str(tmp_path_factory.mktemp("spread")), address=cluster.address
    )
    after = created_bytes(cluster)
    store = ExperimentStore(outcome.uri)
    nodes = actor_nodes(cluster)
    ran_on = {trial: nodes_of(rows, nodes) for trial, rows in trial_results(store).items()}
    return {
        "spec": spec,
        "outcome": outcome,
        "store": store,
        "ran_on": ran_on,
        "created": {node: after[node] - before.get(node, 0) for node in after},
        "data_bytes": len(pickle.dumps(build_datasets(spec.datasets), protocol=5)),
        "head": cluster.head_node.node_id,
        "workers": {n.node_id for n in cluster.worker_nodes},
    }


def test_trials_spread_over_the_worker_nodes(spread_run):
    outcome, spec, store = spread_run["outcome"], spread_run["spec"], spread_run["store"]
    assert outcome.trials == 4 and outcome.errored_trials == []
    ran_on = spread_run["ran_on"]
    assert len(ran_on) == 4
    # each lineage ran on one node from start to end, never on the head (it has no CPUs)
    assert all(len(nodes) == 1 for nodes in ran_on.values()), ran_on
    per_node = Counter(nodes[0] for nodes in ran_on.values())
    assert set(per_node) == spread_run["workers"], (per_node, spread_run["head"])
    rows = store.read_table("rounds").to_pylist()
    assert {(r["dataset"], r["seed"], r["round"], r["method"]) for r in rows} == {
        (d.name, s, n, m)
        for d in spec.datasets
        for s in spec.seeds
        for n in (0, 1)
        for m in IMP_METHODS
    }


def test_data_sets_reach_each_node_once_not_once_per_trial(spread_run):
    per_node = Counter(nodes[0] for nodes in spread_run["ran_on"].values())
    size = spread_run["data_bytes"]
    shared = [node for node, trials in per_node.items() if trials >= 2]
    assert shared, f"no node ran two trials: {per_node}"
    for node, trials in per_node.items():
        created = spread_run["created"][node]
        # one copy of the data sets per node (plus a few small objects), whatever the trial count:
        # a copy per trial would create at least `trials` × size, none would mean no transfer
        assert size * 0.95 <= created < size * 1.5, (node, trials, created, size)
        print(f"\nnode {node[:8]}: {trials} trials, {created} B created; data sets: {size} B")


# -- an IMP lineage loses its node mid-round ---------------------------------------------------
def imp_reference(spec, dataset: str, seed: int):
    """The uninterrupted lineage in this process, on one thread like a one-CPU trial."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = ExperimentStore(tempfile.mkdtemp())
        config = LineageConfig("reference", dataset, seed, spec)
        lineage = IMPLineage(config, build_dataset(spec.datasets, dataset), store)
        while not lineage.done:
            lineage.run_round()
        return lineage, store
    finally:
        torch.set_num_threads(threads)


def comparable(rows: list[dict], skip=("wall_time_s", "experiment")) -> list:
    keep = [k for k in rows[0] if k not in skip]
    return sorted((tuple((k, r[k]) for k in keep) for r in rows), key=repr)


def last_written(store: ExperimentStore, table: str, column: str) -> int:
    """The highest value of ``column`` in the rows written so far (-1: none)."""
    try:
        return max((row[column] for row in store.read_table(table).to_pylist()), default=-1)
    except (FileNotFoundError, StoreError, OSError):
        return -1


def test_imp_lineage_moves_to_another_node_when_its_node_is_lost(
    cluster, tiny_spec_dict, s3_bucket
):
    add_workers(cluster)
    tiny_spec_dict.update(name="moved", seeds=[0], datasets=tiny_spec_dict["datasets"][:1])
    tiny_spec_dict["training"].update(steps=400, rewind_step=10)
    tiny_spec_dict["imp"]["rounds"] = 3
    tiny_spec_dict["run"]["max_failures"] = 1
    spec = parse_spec(tiny_spec_dict)
    root = f"s3://{s3_bucket}/runs"  # nodes share no disk: checkpoints travel through S3
    # a reader without s3fs's listing cache: s3fs takes a cached folder listing as complete, so
    # one cached while the run writes would hide trial folders and checkpoints written later
    store = ExperimentStore(f"{root}/moved", storage_options={"use_listings_cache": False})

    # rounds 0 and 1 are checkpointed: remove the node while it trains round 2
    remover = NodeRemover(
        cluster, lambda: saved_step(store) >= 2, lambda: last_written(store, "rounds", "round")
    )
    remover.start()
    outcome = run_experiment(spec, "name: moved\n", root, address=cluster.address)
    remover.join()
    assert remover.error is None, remover.error
    assert remover.removed is not None, "the lineage finished before its node could be removed"
    assert remover.seen < spec.imp.rounds, "removed too late"
    assert outcome.errored_trials == [] and outcome.trials == 1

    # Tune restarted the trial on the other worker, from a checkpoint, not from round 0
    (rows,) = trial_results(store).values()
    ran_on = nodes_of(rows, actor_nodes(cluster))
    assert len(ran_on) == 2 and ran_on[0] == remover.removed, ran_on
    assert ran_on[1] in {n.node_id for n in cluster.worker_nodes}
    rounds_redone, first_round_after = redone(rows, "imp_round", remover.seen)
    # resumed from a checkpoint, not from round 0, losing at most the round checkpointing
    assert first_round_after >= 1 and rounds_redone <= 2, (rows, remover.seen)
    print(
        f"\nIMP: node removed after round {remover.seen} was written; the trial restarted at "
        f"round {first_round_after}; rounds redone: {rounds_redone}"
    )

    lineage, reference = imp_reference(spec, "nlgp", 0)
    for method in IMP_METHODS:
        rel = f"lineages/{lineage.id}/masks/{method}.pt"
        got, want = store.read_tensors(rel), reference.read_tensors(rel)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), method
    masks = store.read_tensors(f"lineages/{lineage.id}/masks/imp.pt")
    final = mk.masks_after_round(masks, spec.imp.rounds - 1)
    assert mk.alive_counts(final)["layers.0.weight"] < 64 * 32
    assert comparable(store.read_table("rounds").to_pylist()) == comparable(
        reference.read_table("rounds").to_pylist()
    )


# -- a PaI run loses its node mid-epoch --------------------------------------------------------
def pai_reference(spec):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = ExperimentStore(tempfile.mkdtemp())
        (run,) = pai_grid(spec)
        config = PaIConfig(experiment="reference", spec=spec, **run)
        pai = PaIRun(config, build_dataset(spec.datasets, run["dataset"]), store)
        pai.prune()
        while not pai.done:
            pai.run_epoch()
        return pai, store
    finally:
        torch.set_num_threads(threads)


def test_pai_run_moves_to_another_node_when_its_node_is_lost(cluster, pai_spec_dict, tmp_path):
    add_workers(cluster)
    pai_spec_dict.update(name="pai-moved")
    pai_spec_dict["datasets"][0].update(n_train=1200)  # an epoch of 20 steps: about a second
    pai_spec_dict["training"].update(epochs=4, lr_drops=[2])
    pai_spec_dict["pai"].update(methods=["snip"])
    pai_spec_dict["run"]["max_failures"] = 1
    spec = parse_spec(pai_spec_dict)
    root = str(tmp_path / "results")
    store = ExperimentStore(f"{root}/pai-moved")

    # epochs 1 and 2 are checkpointed: remove the node while it trains epoch 3
    remover = NodeRemover(
        cluster,
        lambda: saved_step(store) >= 2,
        lambda: last_written(store, "pai_epochs", "epoch"),
    )
    remover.start()
    outcome = run_experiment(spec, "name: pai-moved\n", root, address=cluster.address)
    remover.join()
    assert remover.error is None, remover.error
    assert remover.removed is not None, "the run finished before its node could be removed"
    assert remover.seen < spec.training.epochs, "removed too late"
    assert outcome.errored_trials == [] and outcome.trials == 1

    (rows,) = trial_results(store).values()
    ran_on = nodes_of(rows, actor_nodes(cluster))
    assert len(ran_on) == 2 and ran_on[0] == remover.removed, ran_on
    epochs_redone, first_epoch_after = redone(rows, "epoch", remover.seen)
    assert first_epoch_after >= 2 and epochs_redone <= 2, (rows, remover.seen)  # not from 0
    print(
        f"\nPaI: node removed after epoch {remover.seen} was written; the trial restarted at "
        f"epoch {first_epoch_after}; epochs redone: {epochs_redone}"
    )

    pai, reference = pai_reference(spec)
    got = store.read_tensors(f"runs/{pai.id}/masks.pt")
    assert got.keys() == pai.masks.keys()
    assert all(torch.equal(got[k], pai.masks[k]) for k in got)
    state = read_state(store, run_folder(pai.id)).state
    assert state["next_epoch"] == spec.training.epochs
    want = pai.model.state_dict()
    assert state["model"].keys() == want.keys()
    assert all(torch.equal(state["model"][k], want[k]) for k in want)
    for table, skip in (
        ("pai_epochs", ("wall_time_s", "experiment")),
        ("pai_masks", ("scoring_time_s", "experiment")),
    ):
        assert comparable(store.read_table(table).to_pylist(), skip) == comparable(
            reference.read_table(table).to_pylist(), skip
        ), table
