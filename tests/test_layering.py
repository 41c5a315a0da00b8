"""Imports point one way only (docs/DESIGN.md). Parsed with ast, so nothing is imported.

Every Python file of the project outside tests/ belongs to a unit with a rule:
- the packages import only the packages below them (PACKAGES);
- the leaves (scripts/, bench/, train_deblur.py, eval_detection.py) may import every package, but no
  unit imports a leaf (the leaves do not import each other either);
- nothing imports tests/ (test doubles such as tests/fakes.py stay out of the product);
- only detect/ imports ultralytics.
Relative imports, ``importlib.import_module("...")``/``__import__("...")`` with a literal name, and bench's
or scripts' bare imports of a module beside them (``from machine import ...``) are edges too.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "configs": set(),
    "runtime": set(),  # bottom layer: torch, onnx, onnxruntime, openvino only
    "deblur": {"configs", "runtime"},
    "detect": {"configs", "runtime"},
    "pipeline": {"configs", "runtime", "deblur", "detect"},
    "evaluation": {"configs", "runtime", "deblur", "detect"},
}
LEAVES = {"scripts", "bench", "train_deblur", "eval_detection"}  # folders of scripts and the two entry points
ALLOWED = {**PACKAGES, **{leaf: set(PACKAGES) for leaf in LEAVES}}
# folders with Python files that are not the product: tests, downloaded data (third-party files), run outputs
NOT_CHECKED = {"tests", "data", "runs"}
# Inside a package, its subpackages point one way too: the pure models and the data sit low, training above
# them, and the command-line tools (deblur.predict, deblur.evaluate) on top. Each subpackage
# may import itself and the listed modules or subpackages of its own package (names relative to the package).
SUBPACKAGES = {
    "deblur.archs": {"config"},
    "deblur.data": {"config"},
    "deblur.train": {"archs", "data", "config", "models", "deconv", "metrics", "kernel_deblur", "kernel_refine", "frames"},
}
MAX_MODULES = 12  # modules directly in one package folder; past that, split it into subpackages by job
SCRIPT_DIRS = ("scripts", "bench", "tests")  # their files run as scripts and import each other by bare name


def _units(root: Path) -> dict[str, str]:
    """Top-level import name -> unit: packages and entry scripts by name, and every module in a folder of
    scripts (bench/machine.py is imported as `machine`) as that folder."""
    names = {unit: unit for unit in [*ALLOWED, "tests"]}
    for folder in SCRIPT_DIRS:
        for path in (root / folder).glob("*.py"):
            names.setdefault(path.stem, folder)
    return names


def _own_modules(path: Path, root: Path) -> set[str]:
    """Dotted names of the project modules `path` imports (absolute and relative; literal dynamic ones)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(root).parent.parts
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module.split(".")
            else:
                base = [*package[: max(0, len(package) - (node.level - 1))], *(node.module.split(".") if node.module else [])]
            if base:
                names.add(".".join(base))
            # `from deblur import data`; `from . import x` at the top level names the top-level module x
            names.update(".".join([*base, alias.name]) for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def _imported_names(path: Path, root: Path) -> set[str]:
    """Top-level names of every module `path` imports (absolute, relative resolved, literal dynamic imports)."""
    return {name.split(".")[0] for name in _own_modules(path, root)}


def _unit_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _label(unit: str) -> str:
    return f"{unit}.py" if unit in ("train_deblur", "eval_detection") else f"{unit}/"


def _violations(path: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the imports of one file (empty: nothing)."""
    unit = _unit_of(path, root)
    imported = _imported_names(path, root)
    ours = {u for u in map(_units(root).get, imported) if u is not None} - {unit}
    rel = path.relative_to(root)
    problems = [
        f"{rel} imports {_label(other)}, but {_label(unit)} may import only {sorted(ALLOWED[unit])}"
        + (" (nothing imports an entry point, a script or a benchmark)" if other in LEAVES else "")
        + (" (test doubles stay in tests/)" if other == "tests" else "")
        for other in sorted(ours - ALLOWED[unit])
    ]
    if "ultralytics" in imported and unit != "detect":
        problems.append(f"{rel} imports ultralytics: only detect/ may")
    return problems


def _python_files(root: Path = ROOT):
    """Every .py file of the project: hidden folders, virtualenvs and NOT_CHECKED folders left out."""
    for top in sorted(root.iterdir()):
        if top.name.startswith(".") or top.name in NOT_CHECKED or (top / "pyvenv.cfg").exists():
            continue
        if top.is_dir():
            yield from sorted(top.rglob("*.py"))
        elif top.suffix == ".py":
            yield top


@pytest.mark.parametrize("path", list(_python_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path):
    unit = _unit_of(path, ROOT)
    assert unit in ALLOWED, f"{path.relative_to(ROOT)}: {unit} has no layering rule; add it to PACKAGES or LEAVES"
    assert not _violations(path)


def test_every_unit_is_checked():
    """The parametrization above covers every package, both folders of scripts and both entry points."""
    units = {_unit_of(p, ROOT) for p in _python_files()}
    missing, unruled = sorted(set(ALLOWED) - units), sorted(units - set(ALLOWED))
    assert not missing and not unruled, f"units without files: {missing}; without a rule: {unruled}"
    assert {p.parent.name for p in ROOT.glob("*/__init__.py")} == set(PACKAGES)


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_checker_sees_a_wrong_edge(tmp_path):
    """A throw-away tree with one wrong edge per file, of every kind the checker claims to see."""
    files = {
        "deblur/ok.py": "import numpy\nfrom configs import loader\nfrom runtime.cache import x\nfrom . import models\n"
                        "from .models import y\nimport importlib\nimportlib.import_module('deblur.models')\n",
        "deblur/up.py": "from pipeline.runner import Runner\n",
        "detect/relative.py": "from ..evaluation import run\n",
        "configs/dynamic.py": "import importlib\nimportlib.import_module('runtime.cache')\n",
        "runtime/dunder.py": "__import__('detect')\n",
        "runtime/entry.py": "import train_deblur\n",
        "evaluation/bench_sibling.py": "from machine import cpu_model\n",
        "pipeline/script.py": "from scripts.fetch_data import main\n",
        "pipeline/double.py": "from fakes import FakeCapture\n",
        "deblur/yolo.py": "from ultralytics import YOLO\n",
        "bench/machine.py": "import os\n",
        "bench/realtime.py": "from machine import cpu_model\nfrom pipeline import runner\nimport eval_detection\n",
        "eval_detection.py": "from evaluation import run\nimport ultralytics\n",
        "train_deblur.py": "from configs import load_config\nfrom deblur import train\nfrom detect import build_detector\n",
        "scripts/fetch_data.py": "from deblur.dataset import IMAGE_EXTS\n",
        "tests/fakes.py": "import pipeline\n",
    }
    _write_tree(tmp_path, files)
    found = {rel: _violations(tmp_path / rel, tmp_path) for rel in files if not rel.startswith("tests/")}
    wrong = {rel: len(v) for rel, v in found.items() if v}
    assert wrong == {
        "deblur/up.py": 1, "detect/relative.py": 1, "configs/dynamic.py": 1, "runtime/dunder.py": 1,
        "runtime/entry.py": 1,
        "evaluation/bench_sibling.py": 1, "pipeline/script.py": 1, "pipeline/double.py": 1, "deblur/yolo.py": 1,
        "bench/realtime.py": 1, "eval_detection.py": 1,
    }, found
    assert "deblur/up.py imports pipeline/" in found["deblur/up.py"][0]
    assert "imports evaluation/" in found["detect/relative.py"][0]
    assert "imports bench/" in found["evaluation/bench_sibling.py"][0]
    assert "nothing imports an entry point" in found["runtime/entry.py"][0]
    assert "test doubles" in found["pipeline/double.py"][0]
    assert "bench/realtime.py imports eval_detection.py" in found["bench/realtime.py"][0]
    assert found["eval_detection.py"] == ["eval_detection.py imports ultralytics: only detect/ may"]


def _sub_unit(dotted: str, root: Path) -> str | None:
    """`deblur.archs.kernel_arch` -> `deblur.archs`; `deblur.models` -> `deblur.models`; other packages: None."""
    parts = dotted.split(".")
    if len(parts) < 2 or not (root / parts[0] / "__init__.py").exists():
        return None
    if (root / parts[0] / parts[1] / "__init__.py").exists():
        return f"{parts[0]}.{parts[1]}"
    if (root / parts[0] / f"{parts[1]}.py").exists():
        return f"{parts[0]}.{parts[1]}"
    return None  # a name imported from the package's __init__ (`from deblur import build_generator`)


def _sub_violations(path: Path, root: Path = ROOT) -> list[str]:
    rel = path.relative_to(root)
    if len(rel.parts) < 3:
        return []
    unit = f"{rel.parts[0]}.{rel.parts[1]}"
    allowed = {f"{rel.parts[0]}.{name}" for name in SUBPACKAGES.get(unit, set())} | {unit}
    used = {u for u in (_sub_unit(n, root) for n in _own_modules(path, root)) if u and u.startswith(rel.parts[0] + ".")}
    return [f"{rel} imports {u}, but {unit} may import only {sorted(allowed)}" for u in sorted(used - allowed)]


def _subpackages(root: Path = ROOT) -> set[str]:
    return {f"{p.parent.parent.name}.{p.parent.name}" for p in root.glob("*/*/__init__.py")
            if p.parent.parent.name in PACKAGES}


@pytest.mark.parametrize("path", [p for p in _python_files() if len(p.relative_to(ROOT).parts) > 2],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_subpackages_point_one_way(path):
    assert not _sub_violations(path)


def test_every_subpackage_has_a_rule():
    assert _subpackages() == set(SUBPACKAGES), "add the new subpackage to SUBPACKAGES, or remove the stale rule"


def test_no_package_folder_is_crowded():
    crowded = {str(d.relative_to(ROOT)): n for d in {p.parent for p in ROOT.glob("*/**/__init__.py")}
               if d.parts[len(ROOT.parts)] in PACKAGES and (n := len(list(d.glob("*.py")))) > MAX_MODULES}
    assert not crowded, f"more than {MAX_MODULES} modules in one folder: {crowded}; split by job into subpackages"


def test_sub_checker_sees_a_wrong_edge(tmp_path):
    files = {
        "deblur/__init__.py": "", "deblur/config.py": "", "deblur/models.py": "", "deblur/predict.py": "",
        "deblur/archs/__init__.py": "", "deblur/data/__init__.py": "", "deblur/train/__init__.py": "",
        "deblur/archs/ok.py": "from deblur.config import X\nfrom deblur.archs.other import Y\n",
        "deblur/archs/up.py": "from deblur.models import build\n",
        "deblur/data/relative.py": "from ..archs import kernel_arch\n",
        "deblur/train/top.py": "from deblur.models import build\nfrom deblur import predict\n",
    }
    _write_tree(tmp_path, files)
    found = {rel: _sub_violations(tmp_path / rel, tmp_path) for rel in files}
    assert {rel: len(v) for rel, v in found.items() if v} == {
        "deblur/archs/up.py": 1, "deblur/data/relative.py": 1, "deblur/train/top.py": 1}, found
    assert "deblur.train may import only" in found["deblur/train/top.py"][0] and "deblur.predict" in found["deblur/train/top.py"][0]
