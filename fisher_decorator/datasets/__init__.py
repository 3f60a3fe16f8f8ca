"""OGBench and D4RL datasets without internet access.

- :func:`load_task_datasets` / :class:`TaskData`: the transitions of a task for training, validated on every load.
- ``fidec data generate``: regenerate OGBench's manipulation and pointmaze datasets with OGBench's own oracles
  (:mod:`~fisher_decorator.datasets.generation`), in OGBench's file format, with a manifest.
- Official OGBench ``.npz`` files and D4RL AntMaze/Adroit ``.hdf5`` files are read as they are from the dataset directory.
"""

from fisher_decorator.datasets.errors import DatasetError, DatasetNotFoundError, UnknownDatasetError
from fisher_decorator.datasets.loading import TaskData, default_dataset_dir, load_task_datasets
from fisher_decorator.datasets.registry import D4RL_DATASETS, OGBENCH_RECIPES, get_recipe, valid_task_names
from fisher_decorator.datasets.validation import validate_transitions

__all__ = [
    "D4RL_DATASETS",
    "OGBENCH_RECIPES",
    "DatasetError",
    "DatasetNotFoundError",
    "TaskData",
    "UnknownDatasetError",
    "default_dataset_dir",
    "get_recipe",
    "load_task_datasets",
    "valid_task_names",
    "validate_transitions",
]
