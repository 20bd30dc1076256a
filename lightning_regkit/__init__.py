"""lightning_regkit: randomness and regularization for PyTorch Lightning.

Example:
    >>> import lightning_regkit
    >>> isinstance(lightning_regkit.__version__, str)
    True
"""

from lightning_regkit import _safe_globals, criteria, schedules  # noqa: F401 (_safe_globals: see its docstring)
from lightning_regkit.callbacks.dropout import DropoutScheduler
from lightning_regkit.callbacks.early_stopping import EarlyStopping, RegkitStoppingReason
from lightning_regkit.callbacks.seed import SeedEverything
from lightning_regkit.callbacks.weight_penalty import WeightPenalty
from lightning_regkit.compare import Comparison, compare
from lightning_regkit.module import RegularizedModule
from lightning_regkit.penalties import DEFAULT_EXCLUDE, L1, L2, MaxNorm
from lightning_regkit.rng import WorkerRNGDataset, capture_rng_state, restore_rng_state
from lightning_regkit.sources import SourceSeeds, source_seed
from lightning_regkit.sweep import MetricSummary, SeedResult, SweepResult, seed_sweep
from lightning_regkit.variance import VarianceBySource, variance_by_source

__version__ = "0.1.0"

__all__: list[str] = [
    "DEFAULT_EXCLUDE",
    "L1",
    "L2",
    "Comparison",
    "DropoutScheduler",
    "EarlyStopping",
    "MaxNorm",
    "MetricSummary",
    "RegkitStoppingReason",
    "RegularizedModule",
    "SeedEverything",
    "SeedResult",
    "SourceSeeds",
    "SweepResult",
    "VarianceBySource",
    "WeightPenalty",
    "WorkerRNGDataset",
    "__version__",
    "capture_rng_state",
    "compare",
    "criteria",
    "restore_rng_state",
    "schedules",
    "seed_sweep",
    "source_seed",
    "variance_by_source",
]
