# mypy: disable-error-code="misc"
# (each class joins the two namespaces' Callback hierarchies, whose identical hooks mypy sees as two)
"""The kit for projects that ``import pytorch_lightning as pl`` (the standalone package).

``lightning.pytorch`` and ``pytorch_lightning`` hold different classes: a ``pytorch_lightning.Trainer``
rejects a ``lightning.pytorch.LightningModule``, its LightningCLI accepts only its own ``Callback``
subclasses, and ``trainer.early_stopping_callback`` looks for its own ``EarlyStopping``. This module
gives every public piece of the kit for that namespace, under the same names and with the same
arguments and behaviour:

.. code-block:: python

    import pytorch_lightning as pl
    from lightning_regkit.pytorch_lightning import RegularizedModule, SeedEverything, WeightPenalty

In a LightningCLI config: ``class_path: lightning_regkit.pytorch_lightning.WeightPenalty``.
Checkpoints are interchangeable between the two namespaces (the callbacks' state keys are the same).

Example:
    >>> import pytorch_lightning
    >>> isinstance(WeightPenalty(l2=1e-4), pytorch_lightning.Callback)
    True
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as _pl
from pytorch_lightning.callbacks import EarlyStopping as _PLEarlyStopping

from lightning_regkit.callbacks import dropout as _dropout
from lightning_regkit.callbacks import early_stopping as _early_stopping
from lightning_regkit.callbacks import seed as _seed
from lightning_regkit.callbacks import weight_penalty as _weight_penalty
from lightning_regkit.module import RegularizationMixin

__all__ = ["DropoutScheduler", "EarlyStopping", "RegularizedModule", "SeedEverything", "WeightPenalty"]


class RegularizedModule(RegularizationMixin, _pl.LightningModule):
    """:class:`lightning_regkit.RegularizedModule` as a ``pytorch_lightning.LightningModule``.

    Example:
        >>> [p.name for p in RegularizedModule(l2=1e-4).penalties]
        ['l2']
    """

    _regkit_kit_class = True


class WeightPenalty(_weight_penalty.WeightPenalty, _pl.Callback):
    """:class:`lightning_regkit.WeightPenalty` as a ``pytorch_lightning.Callback``.

    Example:
        >>> WeightPenalty(l2=1e-4).penalties[0].name
        'l2'
    """


class SeedEverything(_seed.SeedEverything, _pl.Callback):
    """:class:`lightning_regkit.SeedEverything` as a ``pytorch_lightning.Callback``.

    Example:
        >>> isinstance(SeedEverything(0), _pl.Callback)
        True
    """


class DropoutScheduler(_dropout.DropoutScheduler, _pl.Callback):
    """:class:`lightning_regkit.DropoutScheduler` as a ``pytorch_lightning.Callback``.

    Example:
        >>> DropoutScheduler(0.1).interval
        'step'
    """


class _PLEarlyStoppingBase(_PLEarlyStopping):
    """``pytorch_lightning``'s EarlyStopping as a base for ``isinstance`` checks only.

    Its ``__init__`` is skipped: ``lightning.pytorch``'s (same code, same attributes) has already run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


class EarlyStopping(_early_stopping.EarlyStopping, _PLEarlyStoppingBase):
    """:class:`lightning_regkit.EarlyStopping` as a ``pytorch_lightning`` EarlyStopping.

    So that ``trainer.early_stopping_callback`` finds it, it is an instance of
    ``pytorch_lightning.callbacks.EarlyStopping`` too.

    Example:
        >>> from pytorch_lightning.callbacks import EarlyStopping as PLEarlyStopping
        >>> isinstance(EarlyStopping("val_loss"), PLEarlyStopping)
        True
    """
