"""The layers and the one-definition rules, checked on the source itself (AST scans)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where "audio" and "video" may be spelt out: the modality modules, the registry (the paper's default
# modalities), and the code that reads or writes container streams.
MODALITY_NAMED = {"pipeline/audio.py", "pipeline/video.py", "pipeline/modality.py", "pipeline/decode.py",
                  "pipeline/synthetic.py"}


def _modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _trees(*folders: str):
    for path in _modules(*folders):
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def _imported(tree: ast.AST) -> list[str]:
    """Every module a file imports: import, from-import (relative ones resolved) and import_module/__import__."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("pipeline." + (node.module or "") if node.level else node.module or "")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def test_the_ground_floor_imports_nothing_above_it():
    upward = [(path, name) for path, tree in _trees("pipeline") for name in _imported(tree)
              if name == "perceiver" or name.startswith("perceiver.")]
    assert upward == []


def test_importing_every_pipeline_module_loads_no_perceiver_module():
    modules = [p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".") for p in _modules("pipeline")]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'perceiver' or m.startswith('perceiver.')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_audio_and_video_are_spelt_out_only_where_modalities_are_defined():
    named = [f"{path}:{node.lineno}" for path, tree in _trees("pipeline", "perceiver") if path not in MODALITY_NAMED
             for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in ("audio", "video")]
    assert named == []


def test_one_definition_per_record_schema_and_error():
    schemas = [f"{path}:{node.lineno}" for path, tree in _trees("pipeline", "perceiver", "jobs")
               for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr == "schema" and getattr(node.func.value, "id", "") == "pa"]
    assert [s.split(":")[0] for s in schemas] == ["pipeline/records.py"], schemas
    errors = [path for path, tree in _trees("pipeline", "perceiver", "jobs", "benchmarks") for node in ast.walk(tree)
              if isinstance(node, ast.ClassDef) and node.name == "DatasetMismatchError"]
    assert errors == ["pipeline/dataset.py"]


def test_benchmarks_patch_nothing():
    patched = [f"{path}:{node.lineno}" for path, tree in _trees("benchmarks") for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr == "patch"
               or isinstance(node, (ast.Import, ast.ImportFrom)) and "mock" in ast.unparse(node)]
    assert patched == []
