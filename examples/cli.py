"""LightningCLI for the digits example: every kit callback and ``RegularizedModule`` argument from YAML.

Reproduce the demo's kit run (L2, curriculum dropout, early stopping with best-weight restore,
seeding) from the repository root::

    python examples/cli.py fit --config examples/demo_config.yaml
    python -m examples.cli fit --config examples/demo_config.yaml --trainer.max_epochs=5

``python examples/cli.py fit --help`` lists every option; ``--print_config`` shows the resolved
YAML. The model is :class:`digits.RegularizedDigitsClassifier` (``--model.l1``, ``--model.l2``,
``--model.penalties``, ``--model.hidden``, ...) and the data :class:`digits.DigitsDataModule`;
the kit's callbacks go under ``trainer.callbacks`` with their ``class_path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits import DigitsDataModule, RegularizedDigitsClassifier


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build the CLI (and run the subcommand when ``run``); ``args`` replace ``sys.argv[1:]``."""
    return LightningCLI(
        RegularizedDigitsClassifier,
        DigitsDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
