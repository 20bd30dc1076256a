"""The Lightning-private names the kit cannot avoid, in one place.

Each function here reads one thing Lightning has no public API for. ``tests/test_compat.py``
checks every one against the installed Lightning, in both namespaces (``lightning.pytorch``
and ``pytorch_lightning``), so a release that moves a name fails there, not silently in a run.

Example:
    >>> should_update_logs(None)
    True
"""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = ["batches_completed", "should_update_logs"]


def should_update_logs(trainer: Any) -> bool:
    """Whether this training step is a logging step (``log_every_n_steps``); True when unknown.

    Example:
        >>> should_update_logs(None)
        True
    """
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


def batches_completed(trainer: Any) -> int:
    """Training batches completed in this fit before the current one (restored on resume).

    Lightning's ``fit_loop.epoch_loop.batch_progress.total.completed``: from
    ``on_train_batch_start`` to ``on_train_batch_end`` of batch ``n`` (0-based, counted over
    every epoch of the fit) it is ``n``; a resumed fit continues the count.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> trainer = NS(fit_loop=NS(epoch_loop=NS(batch_progress=NS(total=NS(completed=7)))))
        >>> batches_completed(trainer)
        7
    """
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.completed)


# ----------------------------------------------------------------------------- SeedEverything
# Lightning-private names used by ``callbacks/seed.py`` (present, with these meanings, in 2.4-2.6).
def set_torch_flags(deterministic: bool | str | None) -> None:
    """Apply ``Trainer(deterministic=...)``'s torch flags (Lightning's ``_set_torch_flags``).

    ``True``: ``torch.use_deterministic_algorithms(True)``, cuDNN benchmark off and
    ``CUBLAS_WORKSPACE_CONFIG=":4096:8"``; ``"warn"``: the same with ``warn_only=True``;
    ``False``: deterministic algorithms off.

    Example:
        >>> import torch
        >>> before = torch.are_deterministic_algorithms_enabled()
        >>> set_torch_flags(deterministic="warn")
        >>> torch.is_deterministic_algorithms_warn_only_enabled()
        True
        >>> torch.use_deterministic_algorithms(before)
    """
    from lightning.pytorch.trainer.connectors.accelerator_connector import _set_torch_flags

    _set_torch_flags(deterministic=deterministic)  # type: ignore[arg-type]


def set_sampler_epoch(dataloader: object, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on a dataloader's sampler and batch sampler's sampler, where present.

    Lightning's ``_set_sampler_epoch`` (what the fit loop does at each epoch start).

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
        >>> data = TensorDataset(torch.zeros(4))
        >>> loader = DataLoader(data, sampler=DistributedSampler(data, num_replicas=1, rank=0))
        >>> set_sampler_epoch(loader, 3)
        >>> loader.sampler.epoch
        3
    """
    from lightning.fabric.utilities.data import _set_sampler_epoch

    _set_sampler_epoch(dataloader, epoch)


def epochs_processed(trainer: Any) -> int:
    """Training epochs whose batches are all done and that Lightning has marked processed.

    ``fit_loop.epoch_progress.current.processed``: incremented just before the
    ``on_train_epoch_end`` hooks, so it is what sampler epochs are set from.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> epochs_processed(NS(fit_loop=NS(epoch_progress=NS(current=NS(processed=2)))))
        2
    """
    return int(trainer.fit_loop.epoch_progress.current.processed)


def epoch_marked_processed(trainer: Any) -> bool:
    """Whether the epoch that started last has been marked processed (``on_train_epoch_end`` or later).

    False during an epoch's batches and in a validation run after its last batch: a checkpoint
    written there is finished by Lightning after a resume (``fit_loop.epoch_progress.current``:
    ``processed == started``).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> epoch_marked_processed(NS(fit_loop=NS(epoch_progress=NS(current=NS(processed=1, started=2)))))
        False
    """
    progress = trainer.fit_loop.epoch_progress.current
    return int(progress.processed) == int(progress.started)


def is_last_batch(trainer: Any) -> bool:
    """Whether the training batch fetched last was the epoch's last (``batch_progress.is_last_batch``).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> is_last_batch(NS(fit_loop=NS(epoch_loop=NS(batch_progress=NS(is_last_batch=True)))))
        True
    """
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def recreate_train_iterator(trainer: Any) -> bool:
    """Create the fit loop's train iterator anew (``iter(fit_loop._data_fetcher)``); False if none yet.

    A new iterator draws the sampler's shuffle seed and the workers' base seed from the global
    generator, as the fit loop does at the start of every epoch after the first.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> recreate_train_iterator(NS(fit_loop=NS(_data_fetcher=None)))
        False
    """
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if fetcher is None:
        return False
    iter(fetcher)
    return True


__all__ += [
    "epoch_marked_processed",
    "epochs_processed",
    "is_last_batch",
    "recreate_train_iterator",
    "set_sampler_epoch",
    "set_torch_flags",
]


# ----------------------------------------------------------------------------- Python versions
def reduce_enum_by_value(self: Any, proto: object) -> tuple[Any, ...]:
    """An Enum's ``__reduce_ex__`` that pickles a member as ``cls(value)`` on every Python.

    Python 3.11.0 to 3.11.4 (Debian 12 ships 3.11.2) pickle members as ``getattr(cls, name)``, a
    global that ``torch.load(weights_only=True)`` refuses; 3.10 and 3.11.5+ pickle ``cls(value)``,
    which it loads once ``cls`` is a registered safe global.

    Example:
        >>> class Color(Enum):
        ...     RED = 1
        ...     __reduce_ex__ = reduce_enum_by_value
        >>> Color.RED.__reduce_ex__(2)
        (<enum 'Color'>, (1,))
    """
    return type(self), (self.value,)


__all__ += ["reduce_enum_by_value"]


# ----------------------------------------------------------------------------- Lightning versions
# Names that exist only in newer Lightning releases; the kit carries an equivalent for older ones.
try:
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
except ImportError:  # Lightning < 2.6 has no stopping reasons

    class EarlyStoppingReason(Enum):  # type: ignore[no-redef]
        """Why EarlyStopping stopped: Lightning 2.6's ``EarlyStoppingReason``, carried for older releases.

        Same member names and values as Lightning's; with Lightning >= 2.6 this name *is* Lightning's
        class, so ``stopping_reason`` compares equal to Lightning's members there.

        Example:
            >>> EarlyStoppingReason.PATIENCE_EXHAUSTED.value
            3
        """

        NOT_STOPPED = 0
        STOPPING_THRESHOLD = 1
        DIVERGENCE_THRESHOLD = 2
        PATIENCE_EXHAUSTED = 3
        NON_FINITE_METRIC = 4

        __reduce_ex__ = reduce_enum_by_value


LIGHTNING_HAS_STOPPING_REASON = EarlyStoppingReason.__module__.startswith("lightning.")
"""Whether the installed Lightning's own EarlyStopping sets ``stopping_reason`` (Lightning >= 2.6)."""

__all__ += ["LIGHTNING_HAS_STOPPING_REASON", "EarlyStoppingReason"]


def next_epoch_creates_train_iterator(trainer: Any) -> bool:
    """Whether the fit loop creates a new train iterator when the coming epoch's batches start.

    Lightning's ``TrainingEpochLoop.on_run_start`` calls ``iter()`` on the train data fetcher when
    ``current_epoch > 0`` and the epoch loop is not restarting. Lightning 2.6 also skips it while
    ``fit_loop.is_resuming`` (the first epoch after a resume goes on with the iterator built before
    ``on_train_start``); Lightning 2.4 has no ``is_resuming`` and creates a new iterator there, from
    the generator states as they are at that moment. Meaningful from ``on_train_start`` to
    ``on_train_epoch_start``.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> loop = NS(epoch_loop=NS(restarting=False), is_resuming=True)
        >>> next_epoch_creates_train_iterator(NS(current_epoch=1, fit_loop=loop))
        False
    """
    fit_loop = trainer.fit_loop
    return bool(
        trainer.current_epoch > 0
        and not fit_loop.epoch_loop.restarting
        and not getattr(fit_loop, "is_resuming", False)
    )


__all__ += ["next_epoch_creates_train_iterator"]


# ----------------------------------------------------------------------------- resuming on older releases
def tracks_restart_stage(trainer: Any) -> bool:
    """Whether Lightning tracks where in a batch a checkpoint was written (Lightning >= 2.5).

    Lightning 2.5 added ``RestartStage`` to the training epoch loop: a checkpoint written in
    ``on_train_batch_end`` has that batch completed on resume, and the validation the checkpoint
    was written in is not run again. Lightning 2.4 does neither (Lightning issue #14579).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> tracks_restart_stage(NS(fit_loop=NS(epoch_loop=NS())))
        False
    """
    return hasattr(type(trainer.fit_loop.epoch_loop), "restarted_on_train_batch_end")


def written_in_train_batch_end(trainer: Any) -> bool:
    """Whether the checkpoint a fit resumed from was written in ``on_train_batch_end``.

    There the batch is processed but not yet marked completed
    (``batch_progress.total.completed == processed - 1``; Lightning 2.5's test for
    ``RESTARTED_ON_TRAIN_BATCH_END``). Meaningful in ``on_train_start`` of a resumed fit, before
    the epoch loop resets its counters.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> total = NS(processed=6, completed=5)
        >>> written_in_train_batch_end(NS(fit_loop=NS(epoch_loop=NS(batch_progress=NS(total=total)))))
        True
    """
    total = trainer.fit_loop.epoch_loop.batch_progress.total
    return int(total.completed) == int(total.processed) - 1


__all__ += ["tracks_restart_stage", "written_in_train_batch_end"]


def lightning_version(trainer: Any) -> str:
    """The version of the Lightning package a Trainer comes from (``lightning`` or ``pytorch_lightning``).

    Example:
        >>> import lightning
        >>> from lightning.pytorch import Trainer
        >>> lightning_version(Trainer(logger=False, enable_progress_bar=False)) == lightning.__version__
        True
    """
    import importlib

    package = type(trainer).__module__.split(".", 1)[0]
    return str(getattr(importlib.import_module(package), "__version__", "unknown"))


__all__ += ["lightning_version"]
