"""Stop a Tune experiment as soon as its driver lost the writer lease.

The trials' fenced stores already refuse every write once the lease is someone else's; these two
make the driver stop too, instead of retrying trials and starting new ones that can only fail:
the stopper ends the experiment once the lease is lost, and a trial's error makes the lease look
at itself at once rather than at the next heartbeat (a fenced write is the likely cause).

Tune pickles its run config with the experiment; the lease is live state of this driver, so a
pickled copy carries none.
"""

from __future__ import annotations

import logging

from ray import tune

from lotterylab.platform.store.lease import ExperimentLease, LeaseError

log = logging.getLogger(__name__)


class LeaseStopper(tune.Stopper):
    """Stops every trial once ``lease`` is lost."""

    def __init__(self, lease: ExperimentLease | None):
        self.lease = lease

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.lease is not None and self.lease.lost

    def __getstate__(self) -> dict:
        return {"lease": None}


class VerifyLeaseOnError(tune.Callback):
    """A trial's error makes the lease check itself now, so a fenced trial stops the driver."""

    def __init__(self, lease: ExperimentLease | None):
        self.lease = lease

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        if self.lease is None:
            return
        try:
            self.lease.verify()
        except LeaseError:
            pass  # lost: the stopper ends the experiment
        except Exception as exc:  # a network blip: the heartbeat tries again
            log.warning("could not check the lease on %s: %r", self.lease.uri, exc)

    def __getstate__(self) -> dict:
        return {"lease": None}


def lease_watch(lease: ExperimentLease | None) -> dict:
    """``RunConfig`` arguments that stop the experiment when ``lease`` is lost."""
    if lease is None:
        return {}
    return {"stop": LeaseStopper(lease), "callbacks": [VerifyLeaseOnError(lease)]}


__all__ = ["LeaseStopper", "VerifyLeaseOnError", "lease_watch"]
