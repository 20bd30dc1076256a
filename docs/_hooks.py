"""MkDocs hooks for the documentation site (named in ``mkdocs.yml``; not a page).

- The navigation is built from the pages present in ``docs/``: the known pages in a fixed order
  (a known page that does not exist yet is left out), then any other page, so that a page added
  by anyone appears in the site without an edit here, and a strict build never names a missing file.
- ``changelog.md`` and ``contributing.md`` are the repository's ``CHANGELOG.md`` and
  ``CONTRIBUTING.md``, copied in at build time.
- A link to a known page that is not present (another engineer's page that has not landed yet)
  is written as its text alone; any other broken link still fails the strict build.
- ``api.md`` is generated: one mkdocstrings entry per name of ``lightning_regkit.__all__`` (read
  from ``lightning_regkit/__init__.py`` without importing it), then the modules
  ``lightning_regkit.pytorch_lightning``, ``lightning_regkit.penalties``,
  ``lightning_regkit.schedules`` and ``lightning_regkit.criteria``.
- ``css/site.css`` is Pygments' stylesheet for the code that the build highlights (no
  JavaScript, nothing fetched when a page is viewed), and lets table cells wrap.
- :class:`DocstringsAsMarkdown` is a griffe extension (named in ``mkdocs.yml``): the package's
  docstrings are Google style with a few reST habits (``Example:`` sections, roles such as
  ``:class:`X```, one ``.. code-block::``), which it turns into what mkdocstrings renders.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path
from typing import Any

import griffe
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "lightning_regkit"

# (section title or None for a top-level page, page file); a section's pages keep this order
ORDER: list[tuple[str | None, str]] = [
    (None, "index.md"),
    (None, "getting_started.md"),
    ("Guides", "penalties.md"),
    ("Guides", "schedules.md"),
    ("Guides", "dropout.md"),
    ("Guides", "guide_reproducibility.md"),
    ("Guides", "reproducibility.md"),
    ("Guides", "seed_sweep.md"),
    ("Guides", "is_my_improvement_real.md"),
    ("Guides", "guide_early_stopping.md"),
    ("Guides", "early_stopping.md"),
    ("Guides", "lightning_cli.md"),
    ("Guides", "all_together.md"),
    (None, "in_real_projects.md"),
    (None, "performance.md"),
    (None, "comparison.md"),
    (None, "limits.md"),
    (None, "api.md"),
    (None, "changelog.md"),
    (None, "development.md"),
    (None, "contributing.md"),
]
COPIED = {"changelog.md": "CHANGELOG.md", "contributing.md": "CONTRIBUTING.md"}
GENERATED = {"api.md", *COPIED}
# the theme keeps every table cell on one line; the kit's tables have sentences in them
WRAP_TABLE_CELLS = ".wy-table-responsive table td, .wy-table-responsive table th { white-space: normal; }\n"
LINK = re.compile(r"\[([^\]]+)\]\(([\w.-]+\.md)(#[^)\s]*)?\)")
MODULES = ["pytorch_lightning", "penalties", "schedules", "criteria"]  # documented whole, after __all__


ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):`~?([^`]+)`")
EXAMPLE = re.compile(r"^([ \t]*)Example:[ \t]*$", re.M)
CODE_BLOCK = re.compile(r"^([ \t]*)\.\. code-block::[ \t]*(\w*)[ \t]*$")


def docstring_as_markdown(text: str) -> str:
    r"""Return a Google-style docstring with its reST habits written as Markdown.

    ``Example:`` becomes ``Examples:`` (the section whose ``>>>`` lines griffe renders as code),
    a role becomes inline code, a ``.. code-block::`` directive a fenced block.

    Example:
        >>> docstring_as_markdown("See :class:`~pkg.Thing`.\n\nExample:\n    >>> 1\n    1")
        'See `pkg.Thing`.\n\nExamples:\n    >>> 1\n    1'
        >>> print(docstring_as_markdown(".. code-block:: python\n\n    x = 1\n\nAfter."))
        ```python
        x = 1
        ```
        <BLANKLINE>
        After.
    """
    lines = EXAMPLE.sub(r"\1Examples:", ROLE.sub(r"`\1`", text)).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = CODE_BLOCK.match(lines[i])
        i += 1
        if not m:
            out.append(lines[i - 1])
            continue
        indent, lang = m.group(1), m.group(2) or "text"
        body: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent + " ")):
            body.append(lines[i])
            i += 1
        blank_after = len(body) - len("\n".join(body).rstrip().splitlines())
        code = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
        out += [f"{indent}```{lang}", *[f"{indent}{line}".rstrip() for line in code], f"{indent}```"]
        out += [""] * blank_after
    return "\n".join(out)


class DocstringsAsMarkdown(griffe.Extension):
    """Griffe extension: every docstring of the package goes through :func:`docstring_as_markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each object as it is created (before it is parsed)."""
        if obj.docstring is not None:
            obj.docstring.value = docstring_as_markdown(obj.docstring.value)


def public_names(init: Path = ROOT / PACKAGE / "__init__.py") -> list[str]:
    """Return ``__all__`` of the package's ``__init__.py``, read statically.

    Example:
        >>> "seed_sweep" in public_names()
        True
    """
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == "__all__":
            return list(ast.literal_eval(value))
    raise ValueError(f"{init}: no literal __all__")


def api_page(names: list[str]) -> str:
    """Return the Markdown of the API reference page (mkdocstrings directives).

    Example:
        >>> "::: lightning_regkit.EarlyStopping" in api_page(["EarlyStopping"])
        True
    """
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings at build time: every public name of `lightning_regkit`",
        "(its `__all__`), then the modules " + ", ".join(f"`{PACKAGE}.{m}`" for m in MODULES) + ".",
        "Guides with runnable examples are in the navigation; this page is the reference.",
        "",
        "## `lightning_regkit`",
        "",
    ]
    for name in names:
        if name in MODULES:  # criteria and schedules: documented whole below
            continue
        lines += [f"::: {PACKAGE}.{name}", ""]
    for module in MODULES:
        lines += [f"## `{PACKAGE}.{module}`", "", f"::: {PACKAGE}.{module}", "    options:"]
        lines += ["        show_root_heading: false", "        heading_level: 3", ""]
    return "\n".join(lines)


def nav(pages: set[str]) -> list[Any]:
    """Return the navigation of ``pages`` (file names): the known ones in order, then the others.

    Example:
        >>> nav({"api.md", "index.md", "penalties.md", "brand_new.md"})
        ['index.md', {'Guides': ['penalties.md', 'brand_new.md']}, 'api.md']
    """
    items: list[Any] = []
    guides: list[str] = []
    for section, page in [*ORDER, *[("Guides", p) for p in sorted(pages - {p for _, p in ORDER})]]:
        if page not in pages:
            continue
        if section is None:
            items.append(page)
            continue
        if not guides:  # the section goes where its first page is
            items.append({section: guides})
        guides.append(page)
    return items


def on_config(config: Any) -> Any:
    """Set the navigation from the pages present."""
    config["nav"] = nav({p.name for p in Path(config["docs_dir"]).glob("*.md")} | GENERATED)
    return config


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages and the stylesheet."""
    from pygments.formatters import HtmlFormatter

    for page, source in COPIED.items():
        files.append(File.generated(config, page, content=(ROOT / source).read_text()))
    files.append(File.generated(config, "api.md", content=api_page(public_names())))
    css = HtmlFormatter(style="default").get_style_defs(".highlight") + "\n" + WRAP_TABLE_CELLS
    files.append(File.generated(config, "css/site.css", content=css))
    return files


def unlink_absent(markdown: str, present: set[str]) -> str:
    """Write links to known pages that are not in ``present`` as their text alone.

    Example:
        >>> unlink_absent("[A](reproducibility.md#x), [B](limits.md), [C](typo.md)", {"limits.md"})
        'A, [B](limits.md), [C](typo.md)'
    """
    known = {page for _, page in ORDER}

    def replace(m: re.Match[str]) -> str:
        return m.group(1) if m.group(2) in known and m.group(2) not in present else m.group(0)

    return LINK.sub(replace, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Drop the links to known pages that have not landed yet (see :func:`unlink_absent`)."""
    return unlink_absent(markdown, {f.src_uri for f in files.documentation_pages()})
