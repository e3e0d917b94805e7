"""Pruning at initialisation (paper 2): ``run`` prunes a fresh net with the registered methods
of ``platform.pruning`` and trains it, one epoch per call."""

from lotterylab.platform.pai.run import BRANCHES, PaIConfig, PaIRun, pai_grid

__all__ = ["BRANCHES", "PaIConfig", "PaIRun", "pai_grid"]
