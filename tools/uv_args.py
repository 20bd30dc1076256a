r"""Print pip's configuration as ``uv pip install`` arguments (used by the Makefile's set-up).

``make`` sets up ``.venv`` with uv (parallel downloads and bytecode compilation: ~4x faster than pip
here), but uv does not read pip's configuration files or ``PIP_*`` variables. This script reads what
``pip config list`` reports (files and environment) and prints the equivalent uv options, so that uv
installs from the same places pip would: ``find-links``, ``index-url``, ``extra-index-url`` (pip
takes the best version across all its indexes: ``--index-strategy unsafe-best-match``) and
``constraint``. Run with the interpreter of the environment being set up.

Example:
    >>> uv_args(":env:.find-links='/w'\nglobal.find-links='/x'\nglobal.extra-index-url='file:///a file:///b'")
    ['--find-links', '/w', '--extra-index-url', 'file:///a', '--extra-index-url', 'file:///b', '--index-strategy', 'unsafe-best-match']
"""  # noqa: E501

from __future__ import annotations

import re
import subprocess
import sys

_OPTIONS = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
            "constraint": "--constraint"}  # fmt: skip


def uv_args(config_list: str) -> list[str]:
    """The uv options for the output of ``pip config list``."""
    values: dict[str, list[str]] = {}
    from_env: dict[str, list[str]] = {}
    for section, key, value in re.findall(r"^([^.\n]*)\.([\w-]+)='(.*)'$", config_list, re.M):
        if section in {"global", "install"} and key in _OPTIONS:
            values[key] = value.split()  # later files (user, site) override earlier ones, as in pip
        elif section == ":env:" and key in _OPTIONS:
            from_env[key] = value.split()  # PIP_* variables override every file
    values.update(from_env)
    args = [arg for key, flag in _OPTIONS.items() for value in values.get(key, []) for arg in (flag, value)]
    if values.get("extra-index-url"):
        args += ["--index-strategy", "unsafe-best-match"]
    return args


if __name__ == "__main__":
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    print(" ".join(uv_args(listing)))
