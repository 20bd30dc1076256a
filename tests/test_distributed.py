"""The whole kit on DDP with 2 CPU processes (gloo), run twice.

Same script as ``test_integration.py`` (``RegularizedModule`` with L1 + scheduled L2,
``SeedEverything``, ``DropoutScheduler``, ``EarlyStopping(restore_best_weights=True)``,
``ModelCheckpoint``, accumulation, clipping, bf16-mixed, ``num_workers=2``) with
``strategy="ddp", devices=2``. Every rank must end with the same weights, best weights, stop
epoch and early-stopping state; the logged penalty values must be those of the global (replicated)
model, identical on both ranks; and a second DDP run must be bit-identical to the first.
Each rank sees its own half of the data, so ``val_loss`` differs per rank: early stopping's
decision is still identical on every rank (rank 0's value decides the best weights, any rank's
stop stops all).

The two runs are the ``kit_ddp_*`` scenarios of the suite's two DDP launches
(``tests/ddp_battery.py``, ``patience=1``): the script launched as a user launches it (Lightning's
launcher starts rank 1 from its ``fit``), the second time in a new pair of processes.
"""

from __future__ import annotations

from typing import Any

import ddp_battery
import pytest
import torch
from helpers import max_abs_diff
from test_integration import assert_same_run, load_result

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
MAX_EPOCHS = ddp_battery.KIT_DDP_CFG["max_epochs"]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> list[list[dict[str, Any]]]:
    """Both ranks of the DDP kit run in the battery's first launch, then in its second (new processes)."""
    root = ddp_battery.battery_root(tmp_path_factory)
    return [
        [load_result(root / f"kit_ddp_{launch}", rank) for rank in (0, 1)] for launch in ("first", "second")
    ]


def test_every_rank_ends_identical(ddp_runs: list[list[dict[str, Any]]]) -> None:
    for rank0, rank1 in ddp_runs:
        assert rank0["world_size"] == rank1["world_size"] == 2
        assert_same_run(rank0, rank1)
        assert 0 < rank0["stopped_epoch"] < MAX_EPOCHS - 1  # stopped early
        # restore_best_weights: both ranks gave back the same epoch's weights
        assert max_abs_diff(rank0["weights"], rank0["best"]) == 0.0


def test_logged_penalties_are_global(ddp_runs: list[list[dict[str, Any]]]) -> None:
    rank0, rank1 = ddp_runs[0]
    assert len(rank0["steps"]) == len(rank1["steps"]) > 0
    for s0, s1 in zip(rank0["steps"], rank1["steps"], strict=True):
        pen0 = {k: v for k, v in s0[3].items() if k.startswith("regkit/")}
        pen1 = {k: v for k, v in s1[3].items() if k.startswith("regkit/")}
        assert {"regkit/l1", "regkit/l2", "regkit/penalty", "regkit/dropout_p"} <= pen0.keys()
        assert pen0 == pen1  # the same value on every rank, bit for bit
        # ... and it is the penalty of the whole (replicated) model
        assert s0[3]["regkit/l1"] == pytest.approx(s0[4], rel=1e-6)
    # the ranks trained on different shards: their own losses differ, the penalties do not
    pairs = zip(rank0["steps"], rank1["steps"], strict=True)
    assert any(s0[3]["train_loss_step"] != s1[3]["train_loss_step"] for s0, s1 in pairs)


def test_rerun_is_bit_identical(ddp_runs: list[list[dict[str, Any]]]) -> None:
    (first, _), (second, _) = ddp_runs
    assert_same_run(first, second)
    assert first["steps"] == second["steps"] and first["vals"] == second["vals"]
    assert all(torch.equal(first["weights"][k], second["weights"][k]) for k in first["weights"])
