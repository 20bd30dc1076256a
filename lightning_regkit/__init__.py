"""lightning_regkit: randomness and regularization for PyTorch Lightning.

Example:
    >>> import lightning_regkit
    >>> isinstance(lightning_regkit.__version__, str)
    True
"""

from lightning_regkit.callbacks.early_stopping import EarlyStopping, RegkitStoppingReason

__version__ = "0.1.0"

__all__: list[str] = [
    "EarlyStopping",
    "RegkitStoppingReason",
    "__version__",
]
