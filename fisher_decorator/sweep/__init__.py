"""Sweeps: the paper's table (agents x tasks x seeds) on one machine or a Ray cluster, and its report.

- :mod:`~fisher_decorator.sweep.grid`: the grid, budgets (``budgets.json``) and each run's resolved configs;
- :mod:`~fisher_decorator.sweep.datasets`: datasets prepared once, by the driver, before any run starts;
- :mod:`~fisher_decorator.sweep.manifest`: run states (pending/running/done/failed), written atomically;
- :mod:`~fisher_decorator.sweep.runner` / :mod:`~fisher_decorator.sweep.executors` /
  :mod:`~fisher_decorator.sweep.worker`: scheduling on a local process pool or Ray, one process per run,
  resume from checkpoints, retries;
- :mod:`~fisher_decorator.sweep.report` / :mod:`~fisher_decorator.sweep.plots`: the table beside the paper's
  numbers (``paper_scores.json``) and learning curves.
"""
