"""Imports point one way only (docs/DESIGN.md). Parsed with ast, so nothing is imported."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"configs", "runtime", "deblur", "detect", "pipeline", "evaluation"}
ALLOWED = {
    "configs": set(),
    "runtime": set(),  # bottom layer: torch, onnx, onnxruntime, openvino only
    "deblur": {"configs", "runtime"},
    "detect": {"configs", "runtime"},
    "pipeline": {"configs", "runtime", "deblur", "detect"},
    "evaluation": {"configs", "runtime", "deblur", "detect"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _package_files():
    for pkg in sorted(ALLOWED):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield pkg, path


@pytest.mark.parametrize("pkg,path", list(_package_files()), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_imports_point_one_way(pkg, path):
    imported = _imports(path)
    wrong = (imported & OURS) - ALLOWED[pkg] - {pkg}
    assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}; {pkg}/ may import only {sorted(ALLOWED[pkg])}"
    if pkg != "detect":
        assert "ultralytics" not in imported, f"{path.relative_to(ROOT)}: only detect/ may import ultralytics"


def test_checker_sees_a_wrong_edge(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom detect.base import Detection\nimport pipeline.runner as r\n")
    assert _imports(bad) & OURS == {"detect", "pipeline"}


def test_every_package_is_checked():
    assert all((ROOT / pkg / "__init__.py").is_file() for pkg in ("configs", "runtime", "deblur", "detect", "pipeline"))
