"""The layers of latentjax, read from the source with `ast` (no import needed):

- no model family imports another family (shared pieces live in `latentjax.nn`);
- families import neither `latentjax.api` nor `latentjax.cli`;
- `latentjax.nn` and `latentjax.train` import no family;
- `latentjax.data`, `latentjax.metrics` and `latentjax.geometry` import no model and no engine.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "latentjax"
FAMILY_PARENTS = ("latentjax.models", "latentjax.multiregion")
FAMILY_HELPERS = ("latentjax.multiregion._regions", "latentjax.multiregion._routing")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every `latentjax` module that `path` imports (`from a import b` counts `a.b` when `b`
    is a module of the package, else `a`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                relative = Path(*candidate.split(".")[1:])
                is_module = (root / relative).with_suffix(".py").exists() or (
                    root / relative / "__init__.py"
                ).exists()
                found.add(candidate if is_module else node.module)
    return {name for name in found if name.split(".")[0] == "latentjax"}


def family_of(module: str) -> str | None:
    """`latentjax.models.lfads.family` -> `latentjax.models.lfads`; None outside the families
    and for the packages' `__init__` and the multi-region helpers."""
    for parent in FAMILY_PARENTS:
        if module.startswith(parent + "."):
            family = parent + "." + module[len(parent) + 1 :].split(".")[0]
            return None if family in FAMILY_HELPERS else family
    return None


def layer_violations(root: Path) -> list[str]:
    """Every import that breaks the layering, as `importer -> imported: why`."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        own_family = family_of(importer)
        for imported in sorted(imported_modules(path, root)):
            other_family = family_of(imported)
            is_model = imported.startswith(FAMILY_PARENTS)
            if own_family and other_family and other_family != own_family:
                problems.append(f"{importer} -> {imported}: a family imports another family")
            if own_family and imported.startswith(("latentjax.api", "latentjax.cli")):
                problems.append(f"{importer} -> {imported}: a family imports the api or cli")
            if importer.startswith(("latentjax.nn", "latentjax.train")) and is_model:
                problems.append(f"{importer} -> {imported}: the building blocks import a family")
            readers = ("latentjax.data", "latentjax.metrics", "latentjax.geometry")
            if importer.startswith(readers) and (
                is_model or imported.startswith("latentjax.train")
            ):
                problems.append(f"{importer} -> {imported}: data/metrics/geometry import a model")
    return problems


def test_the_package_keeps_its_layers():
    assert layer_violations(PACKAGE) == []


def test_the_check_finds_a_family_importing_another(tmp_path):
    root = tmp_path / "latentjax"
    for folder in ("models", "nn", "metrics"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "models" / "lds.py").write_text("import numpy\n")
    (root / "models" / "plds.py").write_text("from latentjax.models import lds\n")
    (root / "nn" / "em.py").write_text("from latentjax.models.lds import fitter\n")
    (root / "metrics" / "nlb.py").write_text("import latentjax.models.plds\n")
    assert layer_violations(root) == [
        "latentjax.metrics.nlb -> latentjax.models.plds: data/metrics/geometry import a model",
        "latentjax.models.plds -> latentjax.models.lds: a family imports another family",
        "latentjax.nn.em -> latentjax.models.lds: the building blocks import a family",
    ]
