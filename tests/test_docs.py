"""The documentation site builds with warnings as errors and documents every public name; the
docstring examples of every module run as doctests."""

import doctest
import importlib
import os
import pkgutil
import subprocess
import sys
import types
import zlib
from pathlib import Path

import pytest

import latentjax as lj

ROOT = Path(__file__).resolve().parents[1]


def public_names(module: types.ModuleType) -> dict[str, set[str]]:
    """{public name: the dotted paths it may be documented under} for `module`'s `__all__`,
    recursively for the public modules it lists; a family module without `__all__`
    contributes its contract names. A name is found under its public path
    (`latentjax.geometry.pca`) or where it is defined (`latentjax.datasets.lorenz.lorenz`)."""
    names = {}
    for name in getattr(module, "__all__", ()):
        value = getattr(module, name)
        path = f"{module.__name__}.{name}"
        if isinstance(value, types.ModuleType):
            path = value.__name__
            names.update(public_names(value))
            if not hasattr(value, "__all__") and hasattr(value, "Config"):
                names.update({f"{path}.{n}": {f"{path}.{n}"} for n in ("Config", "posterior")})
        paths = {path}
        if hasattr(value, "__module__") and hasattr(value, "__qualname__"):
            paths.add(f"{value.__module__}.{value.__qualname__}")
        names[path] = paths
    return names


def inventory(site: Path) -> set[str]:
    """The object names of a Sphinx-format `objects.inv` (what mkdocstrings documented)."""
    raw = (site / "objects.inv").read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines()}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built with `mkdocs build --strict`; CI builds it once before the tests and
    names the folder in LATENTJAX_DOCS_SITE."""
    built = os.environ.get("LATENTJAX_DOCS_SITE")
    if built and (Path(built) / "objects.inv").exists():
        return Path(built)
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env.pop("LATENTJAX_DOCS_EXECUTE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_the_api_reference_lists_every_public_name(site):
    expected = public_names(lj)
    assert "latentjax.geometry.betti" in expected and "latentjax.models.lds.Config" in expected
    documented = inventory(site)
    missing = sorted(name for name, paths in expected.items() if not paths & documented)
    assert not missing, f"not in the API reference: {missing}"


def test_every_notebook_and_guide_is_a_page(site):
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert (site / "notebooks" / notebook.stem / "index.html").exists(), notebook.name
    for page in ("getting-started", "cli", "benchmarks", "gallery", "adding-a-family"):
        assert (site / page / "index.html").exists(), page
    cli = (site / "cli" / "index.html").read_text()
    for command in ("fit", "sweep", "infer", "evaluate", "report", "demo"):
        assert f"latentjax {command}" in cli
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    for table in sorted((ROOT / "benchmarks").glob("*.md")):
        assert f"benchmarks/{table.name}" in benchmarks


def modules_with_examples() -> list[str]:
    names = ["latentjax"] + [info.name for info in pkgutil.walk_packages(lj.__path__, "latentjax.")]
    finder = doctest.DocTestFinder()
    return [
        name
        for name in names
        if any(test.examples for test in finder.find(importlib.import_module(name), name))
    ]


@pytest.mark.parametrize("module", modules_with_examples())
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    """Examples marked `# doctest: +SKIP` are those that need a data file or minutes."""
    monkeypatch.chdir(tmp_path)  # examples that save files write them here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in finder.find(importlib.import_module(module), module):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def guide_snippets() -> list:
    """The Python blocks of the hand-written guides (not those included from the README)."""
    blocks = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text()
        for number, block in enumerate(text.split("```python\n")[1:]):
            blocks.append(pytest.param(block.split("```")[0], id=f"{page.stem}-{number}"))
    return blocks


@pytest.mark.slow
@pytest.mark.parametrize("code", guide_snippets())
def test_guide_snippets_run(code, shared_file, tmp_path, monkeypatch):
    """Each Python block of docs/*.md runs as written (minutes: fits at full size)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nwb = "sub-Jenkins_ses-small_desc-test_ecephys.nwb"
    if nwb in code:
        code = code.replace(nwb, str(shared_file(f"mc_maze_small_test/{nwb}")))
    exec(compile(code, "<guide>", "exec"), {"__name__": "__guide__"})
