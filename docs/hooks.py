"""mkdocs hooks: the pages generated from the code at build time.

- `api/<module>.md`: one API-reference page per public module (`latentjax`, every module in
  `lj.__all__`, and every model family inside `lj.models` and `lj.multiregion`), listing the
  names of the module's `__all__` for mkdocstrings; and one per building block a family
  author uses (`latentjax.results`, `latentjax.nn.*`).
- `cli.md`: the `--help` of every `latentjax` subcommand, from the parser itself.
- `benchmarks.md`: every table in `benchmarks/`, as the scripts wrote it.
- `notebooks/*.ipynb`: the notebooks of the repository, rendered by mkdocs-jupyter.

The "Tutorials" and "API reference" sections of the navigation are filled in here, so a new
notebook or public module appears on the site without editing mkdocs.yml.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import types
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def public_modules() -> dict[str, list[str] | None]:
    """{module name: the names its API page documents} for every public module.

    A module's page documents its `__all__` without the submodules that have their own page;
    `None` (families without `__all__`) lets mkdocstrings show every public name.
    """
    import latentjax

    pages: dict[str, list[str] | None] = {}

    def visit(module: types.ModuleType) -> None:
        names = getattr(module, "__all__", None)
        submodules = [
            value
            for value in (getattr(module, name) for name in names or ())
            if isinstance(value, types.ModuleType) and value.__name__.startswith("latentjax.")
        ]
        own_pages = {sub.__name__.rsplit(".", 1)[-1] for sub in submodules}
        pages[module.__name__] = (
            None if names is None else [name for name in names if name not in own_pages]
        )
        for sub in submodules:
            if sub.__name__ not in pages:
                visit(sub)

    visit(latentjax)
    return pages


def building_blocks() -> list[str]:
    """The modules a family author builds on: `latentjax.results` and `latentjax.nn.*`."""
    import latentjax.nn

    submodules = pkgutil.iter_modules(latentjax.nn.__path__, "latentjax.nn.")
    return ["latentjax.results", "latentjax.nn"] + sorted(
        info.name for info in submodules if not info.name.rsplit(".", 1)[-1].startswith("_")
    )


def api_page(module: str, members: list[str] | None) -> str:
    """Markdown of the API page of `module` (mkdocstrings directives).

    A public name that is also the name of a submodule (`lj.datasets.lorenz`, the function
    in `latentjax/datasets/lorenz.py`) is documented at its definition, since mkdocstrings
    would otherwise find the submodule under that name.
    """
    lines = [f"# `{module}`", "", f"::: {module}", "    options:", "      show_root_heading: false"]
    if members is None:
        return "\n".join(lines) + "\n"
    package = importlib.import_module(module)
    is_package = hasattr(package, "__path__")
    shadowed = [
        name
        for name in members
        if is_package
        and not isinstance(getattr(package, name), types.ModuleType)
        and importlib.util.find_spec(f"{module}.{name}") is not None
    ]
    lines.append(f"      members: [{', '.join(n for n in members if n not in shadowed)}]")
    for name in shadowed:
        value = getattr(package, name)
        lines += ["", f"::: {value.__module__}.{value.__qualname__}", "    options:"]
        lines += ["      show_root_full_path: false", "      heading_level: 2"]
    return "\n".join(lines) + "\n"


def cli_page() -> str:
    """Markdown of every subcommand's `--help`, taken from `latentjax.cli.make_parser`."""
    import argparse

    from latentjax.cli import make_parser

    parser = make_parser()
    parts = [
        "# Command line",
        "",
        "Generated from the parsers of `latentjax.cli` when the site is built.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts += ["", f"## `latentjax {name}`", "", "```text", sub.format_help().rstrip()]
                parts.append("```")
    return "\n".join(parts) + "\n"


def benchmarks_page() -> str:
    """Every file of `benchmarks/`, headings moved one level down, under one page."""
    parts = [
        "# Benchmarks",
        "",
        "Each section is a file of `benchmarks/`, written by the script it names (machine,",
        "versions and date inside). Regenerate one by running its script.",
    ]
    for path in sorted((ROOT / "benchmarks").glob("*.md")):
        text = re.sub(r"^(#+) ", r"#\1 ", path.read_text(), flags=re.MULTILINE)
        if not text.lstrip().startswith("## "):
            text = f"## {path.stem}\n\n{text}"
        parts += ["", f"<!-- benchmarks/{path.name} -->", text.rstrip()]
    return "\n".join(parts) + "\n"


def notebooks() -> list[Path]:
    """The notebooks, the quick start first."""
    return sorted((ROOT / "notebooks").glob("*.ipynb"), key=lambda p: (p.stem != "quickstart", p))


def _title(notebook: Path) -> str:
    return notebook.stem.replace("_", " ").capitalize()


def on_config(config):
    api = [{module: f"api/{module}.md"} for module in public_modules()]
    blocks = [{module: f"api/{module}.md"} for module in building_blocks()]
    api.append({"Building blocks for families": blocks})
    tutorials = [{_title(nb): f"notebooks/{nb.name}"} for nb in notebooks()]
    for item in config["nav"]:
        if isinstance(item, dict) and "API reference" in item:
            item["API reference"] = api
        if isinstance(item, dict) and "Tutorials" in item:
            item["Tutorials"] = tutorials
    return config


# Before mkdocs-jupyter's own `on_files`, which turns .ipynb files into pages.
@event_priority(100)
def on_files(files, config):
    pages = {**public_modules(), **dict.fromkeys(building_blocks())}
    for module, members in pages.items():
        files.append(File.generated(config, f"api/{module}.md", content=api_page(module, members)))
    files.append(File.generated(config, "cli.md", content=cli_page()))
    files.append(File.generated(config, "benchmarks.md", content=benchmarks_page()))
    for notebook in notebooks():
        files.append(
            File(
                f"notebooks/{notebook.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
