"""The fake Waiqin365 (product code): signed endpoints, day filters, paging, faults, churn."""

from poller.simulator.server import Simulator, run_simulator

__all__ = ["Simulator", "run_simulator"]
