"""The tour notebook is committed with its outputs, so it reads well on the repository page.

(Running it is ``test_notebook_runs.py``'s job; it checks that a run prints :data:`SECTION_RESULTS` too.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "tour.ipynb"

#: (a section's heading, a result it prints): in the stored outputs, and in what a run prints.
SECTION_RESULTS = [
    ("## 1. Weight penalties", "exact zeros"),
    ("## 2. Dropout schedules", "p after fit (restored)"),
    ("## 3. Early stopping", "reason: PATIENCE_EXHAUSTED"),
    ("## 4. Seeding", "bit-identical: True"),
    ("## 4. Seeding", "ci95_high"),
    ("## 5. Variance by source of randomness", "std ci95 high"),
    ("## 5. Variance by source of randomness", "| varied | n | std of baseline test acc (95% CI) |"),
    ("## 5. Variance by source of randomness", "P(A > B) = "),
]


@pytest.fixture(scope="module")
def cells() -> list[dict]:
    return json.loads(NOTEBOOK.read_text())["cells"]


def _outputs(cells: list[dict], kind: str) -> list[dict]:
    return [o for c in cells if c["cell_type"] == "code" for o in c["outputs"] if kind in o.get("data", {})]


def test_every_code_cell_was_executed_in_order_without_errors(cells: list[dict]) -> None:
    counts = [c["execution_count"] for c in cells if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1))
    errors = [
        o for c in cells if c["cell_type"] == "code" for o in c["outputs"] if o["output_type"] == "error"
    ]
    assert errors == []


def test_plots_are_inline_png(cells: list[dict]) -> None:
    # regularization path, schedules, DropoutScheduler run, early stopping, seed sweep, variance by source
    assert len(_outputs(cells, "image/png")) >= 6


@pytest.mark.parametrize(("section", "printed"), SECTION_RESULTS)
def test_each_feature_has_its_section_and_result(cells: list[dict], section: str, printed: str) -> None:
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert section in markdown
    streams = "".join(
        "".join(o.get("text", "")) for c in cells if c["cell_type"] == "code" for o in c["outputs"]
    )
    assert printed in streams


def test_variance_section_shows_its_figure_after_its_table(cells: list[dict]) -> None:
    """Section 5: the table by source, then the figure (bars by source and P(kit > baseline))."""
    start = next(i for i, c in enumerate(cells) if "## 5. Variance by source" in "".join(c["source"]))
    section = [c for c in cells[start:] if c["cell_type"] == "code"][:2]
    text = "".join("".join(o.get("text", "")) for o in section[0]["outputs"])
    rows = [line.split("  ") for line in text.splitlines()[2:6]]
    expected = [("baseline test acc", source) for source in ("init", "data", "train", "all")]
    assert [(r[0], r[1]) for r in rows] == expected
    assert any("image/png" in o.get("data", {}) for o in section[1]["outputs"])
