"""Orchestration: runs of scenarios, each turned into a result.

- `run`: `run_scenario` (`streamlab run`, one scenario at one shape, measured or simulated);
- `fresh`: `run_apart`, the same in a process of its own (measured runs that are compared);
- `compare`: `collect`, layouts x batch sizes into one CompareResult (`streamlab compare`).
"""

__all__ = ["compare", "fresh", "run"]
