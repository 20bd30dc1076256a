"""lightning_regkit: randomness and regularization for PyTorch Lightning.

Example:
    >>> import lightning_regkit
    >>> isinstance(lightning_regkit.__version__, str)
    True
"""

__version__ = "0.1.0"

__all__: list[str] = ["__version__"]
