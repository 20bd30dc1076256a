"""lightning_regkit demo: train an MLP on the digits data set and print accuracies.

Run it with ``make demo`` (sets up .venv first) or ``python examples/demo.py --help``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning.pytorch as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits import DigitsClassifier, DigitsDataModule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    dm = DigitsDataModule(batch_size=64)
    model = DigitsClassifier(hidden=256, dropout=0.2, lr=1e-3)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(args.out),
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - t0
    val = trainer.validate(model, datamodule=dm, verbose=False)[0]
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    print(f"\nDigits MLP, seed {args.seed}, {args.epochs} epochs, fit {fit_s:.1f} s")
    print(f"validation accuracy: {val['val_acc']:.4f}")
    print(f"test accuracy:       {test['test_acc']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
