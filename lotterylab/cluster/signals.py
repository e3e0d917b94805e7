"""SIGINT and SIGTERM end a run the way Ctrl+C ends a Tune experiment, then exit 130 or 143.

Tune stops on SIGINT by itself but returns as if the experiment had ended (the driver would then
draw a report of the rounds so far and exit 0), and SIGTERM reaches Ray's handler, which exits
from wherever the driver is. Here both signals ask Tune's own stop (the handler Tune keeps on
SIGUSR1 while it runs: trials stop, Tune saves its state), and the driver then raises
:class:`Interrupted` instead of reporting, so the lease is released and Ray shut down on the way
out. A second signal, or one outside Tune's loop, raises at once.
"""

from __future__ import annotations

import contextlib
import os
import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"  # Tune leaves SIGINT to us when set


class Interrupted(BaseException):  # noqa: N818  (like KeyboardInterrupt: not an error)
    """The driver was asked to stop; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int, uri: str):
        self.signum, self.uri = signum, uri
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name}: the rounds that finished are stored and "
            f"the lease is released; no report was written. Continue with: "
            f"lotterylab resume {uri}"
        )


class StopOnSignals:
    """Context manager turning SIGINT/SIGTERM into Tune's stop, then :class:`Interrupted`."""

    def __init__(self, uri: str):
        self.uri = uri
        self.signum: int | None = None
        self._in_tune = False
        self._saved: dict[int, object] = {}
        self._saved_env: str | None = None

    def __enter__(self) -> StopOnSignals:
        self._saved = {s: signal.getsignal(s) for s in SIGNALS}
        self._saved_env = os.environ.get(_TUNE_SIGINT)
        os.environ[_TUNE_SIGINT] = "1"
        self.install()
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        if self._saved_env is None:
            os.environ.pop(_TUNE_SIGINT, None)
        else:
            os.environ[_TUNE_SIGINT] = self._saved_env

    def install(self) -> None:
        """Take both signals again (``ray.init`` sets its own SIGTERM handler)."""
        for signum in SIGNALS:
            signal.signal(signum, self._handle)

    @contextlib.contextmanager
    def tune(self):
        """While Tune's loop runs: a signal asks it to stop instead of raising inside it."""
        self._in_tune = True
        try:
            yield
        finally:
            self._in_tune = False

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal arrived."""
        if self.signum is not None:
            raise Interrupted(self.signum, self.uri)

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if first and self._in_tune and callable(tune_stop):
            tune_stop(signum, frame)
            self.install()  # Tune's handler puts back the SIGINT handler it found
            return
        raise Interrupted(self.signum, self.uri)


__all__ = ["Interrupted", "StopOnSignals"]
