"""Orchestration: runs of scenarios, each turned into a result.

- `run`: `run_scenario` (`streamlab run`, one scenario at one shape, measured or simulated);
- `fresh`: `run_apart`, the same in a process of its own (measured runs that are compared);
- `compare`: `collect`, layouts x batch sizes into one CompareResult (`streamlab compare`);
- `files`: `run_files`, the names of a run's result and trace (never the same for two different
  runs, never outside --out, never replacing an earlier file unless --force).
"""

__all__ = ["compare", "files", "fresh", "run"]
