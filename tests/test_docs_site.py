"""The documentation site builds with warnings as errors, and holds what it promises.

The build is ``mkdocs build --strict`` with the repository's ``mkdocs.yml`` (what ``make docs``
runs), into a temporary folder. The code on the pages is run by ``tests/test_docs.py``; this file
checks the site: every page of ``docs/`` is in it and in the navigation, the API reference has every
public name, the changelog and contributing pages are copied in, nothing is loaded from the network
when a page is viewed, and a broken link fails the build.
"""

from __future__ import annotations

import doctest
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from helpers import ROOT, load_file_module

# the docs extra (pip install -e '.[docs]') builds the site and its API reference (looked up, not imported:
# importing mkdocstrings' handler costs each test process ~0.8 s at collection)
pytestmark = pytest.mark.skipif(
    not all(map(importlib.util.find_spec, ["mkdocs", "mkdocstrings_handlers.python"])),
    reason="the docs extra (pip install -e '.[docs]') builds the site and its API reference",
)

DOCS = ROOT / "docs"
MKDOCS = Path(sys.executable).parent / "mkdocs"


def _hooks() -> ModuleType:
    return load_file_module(DOCS / "_hooks.py", "regkit_docs_hooks")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=tmp_path_factory.mktemp("cwd"),  # the config's paths do not depend on the working directory
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def _nav_links(index_html: str) -> set[str]:
    nav = index_html[index_html.index('role="navigation"') :]
    return set(re.findall(r'href="(?:\./)?([\w.-]+\.html)', nav))


@pytest.mark.slow
def test_every_page_is_built_and_in_the_navigation(site: Path) -> None:
    pages = {p.stem for p in DOCS.glob("*.md")}
    mine = {"index", "getting_started", "penalties", "schedules", "limits", "performance", "comparison"}
    assert mine <= pages, mine - pages
    expected = {f"{stem}.html" for stem in pages | {"api", "changelog", "contributing"}}
    built = {p.name for p in site.glob("*.html")}
    assert expected <= built, expected - built
    in_nav = _nav_links((site / "index.html").read_text())
    assert expected - {"index.html"} <= in_nav, (expected - {"index.html"}) - in_nav


@pytest.mark.slow
def test_api_reference_documents_every_public_name(site: Path) -> None:
    import lightning_regkit

    html = (site / "api.html").read_text()
    ids = set(re.findall(r'id="([\w.]+)"', html))
    for name in lightning_regkit.__all__:
        assert f"lightning_regkit.{name}" in ids, f"the API reference lacks lightning_regkit.{name}"
    for module in ("pytorch_lightning", "penalties", "schedules", "criteria"):
        assert f"lightning_regkit.{module}" in ids
    assert "lightning_regkit.pytorch_lightning.WeightPenalty" in ids
    assert "lightning_regkit.schedules.Curriculum" in ids
    # docstring examples are rendered as highlighted code, not as Markdown quotes
    assert '<span class="gp">&gt;&gt;&gt; </span>' in html
    assert "<blockquote>" not in html
    assert ":class:`" not in html  # reST roles were turned into code


@pytest.mark.slow
def test_changelog_and_contributing_are_copied_in(site: Path) -> None:
    changelog = (site / "changelog.html").read_text()
    first_version = re.search(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert first_version and f"[{first_version.group(1)}]" in changelog
    assert "Keep a Changelog" in changelog
    assert "How we write code" in (site / "contributing.html").read_text()


@pytest.mark.slow
def test_pages_load_nothing_from_the_network(site: Path) -> None:
    for page in site.glob("*.html"):
        html = page.read_text()
        remote = re.findall(r'(?:src|href)="(https?:[^"]+\.(?:js|css)[^"]*)"', html)
        assert not remote, f"{page.name} loads {remote}"
    assert (site / "css" / "site.css").stat().st_size > 1000
    assert 'class="highlight"' in (site / "penalties.html").read_text()
    assert (site / "demo.png").exists() and (site / "dropout_schedules.png").exists()


@pytest.mark.slow
def test_a_broken_link_fails_the_build(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "limits.md").write_text("# Limits\n\n## Known ones\n")

    def build_with(link: str) -> None:
        (docs / "index.md").write_text(f"# Home\n\n[limits]({link})\n")
        # the repository's configuration (hooks, validation, strict) without mkdocstrings: fast
        config = load_config(
            str(ROOT / "mkdocs.yml"), docs_dir=str(docs), site_dir=str(tmp_path / "site"), plugins=["search"]
        )
        assert config["strict"]
        build(config)

    build_with("limits.md#known-ones")  # a good link builds
    with pytest.raises(Abort, match="warnings in strict mode"):
        build_with("limits.md#no-such-heading")
    assert "no-such-heading" in caplog.text
    with pytest.raises(Abort, match="warnings in strict mode"):
        build_with("limitz.md")
    assert "limitz.md" in caplog.text


def test_hooks_doctests() -> None:
    hooks = _hooks()
    result = doctest.testmod(hooks, verbose=False)
    assert result.attempted >= 5 and result.failed == 0


def test_nav_lists_present_pages_only_and_every_page() -> None:
    hooks = _hooks()
    nav = hooks.nav({"index.md", "early_stopping.md", "zz_new_page.md", "api.md"})
    assert nav == ["index.md", {"Guides": ["early_stopping.md", "zz_new_page.md"]}, "api.md"]
    every = {p.name for p in DOCS.glob("*.md")} | hooks.GENERATED
    flat = [page for item in hooks.nav(every) for page in _flat(item)]
    assert sorted(flat) == sorted(every)
    assert len(flat) == len(set(flat))


def _flat(item: Any) -> list[str]:
    return [p for pages in item.values() for p in pages] if isinstance(item, dict) else [item]


def _is_subset(shown: Any, real: Any, where: str = "") -> None:
    if isinstance(shown, dict):
        assert isinstance(real, dict), where
        for key, value in shown.items():
            assert key in real, f"{where}.{key} is shown but not in the file"
            _is_subset(value, real[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(real, list) and len(shown) == len(real), where
        for i, (a, b) in enumerate(zip(shown, real, strict=True)):
            _is_subset(a, b, f"{where}[{i}]")
    else:
        assert shown == real, f"{where}: shown {shown!r}, the file has {real!r}"


def test_lightning_cli_page_shows_the_real_config() -> None:
    page = (DOCS / "lightning_cli.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", page, re.S)
    real = yaml.safe_load((ROOT / "examples" / "demo_config.yaml").read_text())
    _is_subset(yaml.safe_load(block), real)
    with pytest.raises(AssertionError, match="patience"):  # the check sees a changed value
        _is_subset(yaml.safe_load(block.replace("patience: 10", "patience: 11")), real)
