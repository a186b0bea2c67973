"""The package's layout holds its rule: what inference and the models import, no import circle,
no module too long to read. See docs/architecture.md."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, review_rows

PACKAGE = REPO / "trainer"
# Shipped models are loaded where none of these is installed.
TRAINING_ONLY = ("accelerate", "datasets", "wandb")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import stands (in a function, under
    TYPE_CHECKING): the trainer's modules by full name, others by their top-level name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return {name if name.startswith("trainer") else name.split(".")[0] for name in found}


GRAPH = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_the_layout_has_its_parts_and_no_module_too_long_to_read():
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py" and name != "trainer"}
    assert {"trainer.data", "trainer.models", "trainer.training", "trainer.inference"} <= packages
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"


@pytest.mark.parametrize("part", ["trainer.data", "trainer.models", "trainer.inference"])
def test_data_models_and_inference_never_import_training(part):
    for name in (m for m in MODULES if m == part or m.startswith(part + ".")):
        wrong = {m for m in imports(MODULES[name]) if m.startswith("trainer.training") or m == "accelerate"}
        if part != "trainer.data":  # the data pipeline is built on datasets; the rest needs none of it
            wrong |= {m for m in imports(MODULES[name]) if m in TRAINING_ONLY}
        assert not wrong, f"{name} imports {sorted(wrong)}"


def test_no_import_circle():
    """Among the trainer's modules, type-only and in-function imports included."""
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for other in sorted(GRAPH[name]):
            if state.get(other) == "open":
                circle = [*path[path.index(other) :], other] if other in path else [name, other]
                pytest.fail("import circle: " + " -> ".join(circle))
            if other not in state:
                visit(other, [*path, other])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_the_check_sees_a_circle_and_a_training_import():
    """The two tests above can fail: the graph they read has real edges."""
    assert "trainer.training.run" in GRAPH["trainer.training.task"]
    assert "trainer.training.task" in GRAPH["trainer.training.train"]
    assert "trainer.inference.folder" in GRAPH["trainer.inference.loaded"]
    assert "datasets" in imports(MODULES["trainer.data.sources"])


@pytest.mark.slow  # starts a process
def test_loading_a_model_and_predicting_imports_nothing_of_training(tmp_path):
    from trainer.data.tokenizer import TokenizerConfig, train_tokenizer
    from trainer.inference.folder import export_model
    from trainer.models.sentiment import ModelConfig, SentimentRNN

    texts = [text for text, _ in review_rows(60)]
    tokenizer = train_tokenizer(iter([texts]), TokenizerConfig(model="wordlevel", vocab_size=300, min_frequency=1))
    model = SentimentRNN(ModelConfig(embedding_dim=8, hidden_dim=8), tokenizer.get_vocab_size(), 2)
    export_model(tmp_path / "model", model, tokenizer, ["negative", "positive"], max_length=64)
    code = (
        "import json, sys; from trainer import load_model; "
        f"p = load_model({str(tmp_path / 'model')!r}).predict(['a fine film', 'dull']); "
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'accelerate', 'datasets', 'wandb'} "
        "or m.startswith('trainer.training')); "
        "print(json.dumps({'labels': [x.label for x in p], 'loaded': loaded}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert len(result["labels"]) == 2 and set(result["labels"]) <= {"negative", "positive"}
    assert result["loaded"] == []
