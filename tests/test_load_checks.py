"""The load checks live in ``dictionary_learning_aligned/load_checks.py``, which imports nothing else of the package
(``models`` imports it), and every public name there stays importable from ``models``, where tests, docs and users
import them from."""
import ast
from pathlib import Path

from dictionary_learning_aligned import load_checks, models

SOURCE = Path(load_checks.__file__).read_text(encoding="utf-8")


def public_names(tree: ast.Module) -> list:
    """The public names a module defines at its top level (assignments, functions, classes)."""
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in names if not n.startswith("_")]


def test_models_re_exports_every_public_name_of_load_checks():
    names = public_names(ast.parse(SOURCE))
    assert {"check_tokenizer", "TokenizerCheckError", "check_model_loss", "ModelCheckError", "TOKENIZER_PROBE",
            "TOKENIZER_PROBE_IDS", "MODEL_PROBE_LOSS", "MODEL_PROBE_TOLERANCE"} <= set(names)
    assert [n for n in names if getattr(models, n, None) is not getattr(load_checks, n)] == []


def test_load_checks_imports_nothing_of_the_package():
    modules = []
    for node in ast.walk(ast.parse(SOURCE)):
        if isinstance(node, ast.ImportFrom):
            modules.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
    assert "transformers" in modules  # the walk reaches the imports inside functions
    assert [m for m in modules if m.startswith((".", "dictionary_learning_aligned"))] == []
