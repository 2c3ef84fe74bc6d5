"""The package's shape, read from its source: the engine names no task, no import circle, heavy imports only
where they are used, and no PyTorch code in what `pip install` ships."""

import ast
import io
import pathlib
import tokenize

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "jaxnets"
# Imports that may sit inside a function: optional or heavy dependencies, each with its reason beside it.
LAZY_IMPORTS = {"IPython.display", "jaxnets.data.pipeline", "jaxnets.data.tf_imports", "jaxnets.ops._onednn",
                "jax._src.clusters", "tensorboardX", "torch", "tensorflow", "jax.experimental.jax2tf", "jax2onnx",
                "soundfile", "soxr"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: pathlib.Path):
    """(imported jaxnets module or other module name, line number, inside a function?) for every import."""
    tree = ast.parse(path.read_text())
    inside = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn) if node is not fn}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in inside
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                module = submodule if submodule in MODULES or submodule in LAZY_IMPORTS else node.module
                yield module, node.lineno, id(node) in inside


def code_without_comments(path: pathlib.Path) -> str:
    """The source with comments and docstrings removed (string literals stay: messages are code)."""
    tree = ast.parse(path.read_text())
    docstrings = {node.body[0].value.lineno for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
                  and isinstance(node.body[0].value.value, str)}
    kept = [tok for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
            if tok.type != tokenize.COMMENT and not (tok.type == tokenize.STRING and tok.start[0] in docstrings)]
    return tokenize.untokenize(kept)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("jaxnets.train")))
def test_the_engine_imports_no_task_and_names_none(name):
    for target, line, _ in imports(MODULES[name]):
        assert not target.startswith(("jaxnets.tasks", "jaxnets.nas", "jaxnets.models.enas")), (
            f"{MODULES[name]}:{line} imports {target}")
    code = code_without_comments(MODULES[name]).lower()
    for word in ("search", "enas", "controller", "classification", "distill"):
        assert word not in code, f"{MODULES[name]} names {word!r} outside comments"


def test_no_import_circle_counting_imports_inside_functions():
    graph = {name: {t for t, _, _ in imports(path) if t in MODULES} for name, path in MODULES.items()}
    index, low, stack, circles, counter = {}, {}, [], [], [0]

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                circles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    assert circles == []


def test_imports_inside_functions_are_only_heavy_or_optional_ones_with_their_reason():
    for path in MODULES.values():
        lines = path.read_text().splitlines()
        for target, line, inside_function in imports(path):
            if inside_function:
                assert any(target == lazy or target.startswith(f"{lazy}.") for lazy in LAZY_IMPORTS), (
                    f"{path}:{line} imports {target} inside a function")
                assert "#" in lines[line - 1] or lines[line - 2].strip().startswith("#"), (
                    f"{path}:{line}: say why {target} is imported inside a function")


def test_tensorflow_is_imported_by_the_data_package_and_the_tensorflow_export_formats_only():
    """Models, steps, checkpoints and notebooks import without TensorFlow; the export's SavedModel and TFLite
    writers import it inside their functions. And always through jaxnets/data/tf_imports.py, which skips Keras'
    import: a direct import in any module would bring Keras back wherever that module is imported first."""
    tf_imports, export = PACKAGE / "data" / "tf_imports.py", PACKAGE / "export.py"
    for path in MODULES.values():
        for target, line, inside_function in imports(path):
            in_an_export_writer = inside_function and path == export  # (after the writer's import of tf_imports)
            if target.split(".")[0] in ("tensorflow", "tensorflow_datasets") and path != tf_imports:
                assert in_an_export_writer and target not in ("tensorflow", "tensorflow_datasets"), (
                    f"{path}:{line} imports {target}: import TensorFlow from jaxnets.data.tf_imports")
            if target in ("jaxnets.data.tf_imports", "jax.experimental.jax2tf"):
                assert PACKAGE / "data" in path.parents or in_an_export_writer, f"{path}:{line} imports {target}"


def test_the_package_holds_no_pytorch_code():
    """No module defines or runs a PyTorch network (the twins live in tests/). One function reads PyTorch's own
    file format (.pth) with torch.load(weights_only=True) where torch is installed: torch is imported there only."""
    readers = {PACKAGE / "convert" / "files.py"}
    for path in MODULES.values():
        for target, line, inside_function in imports(path):
            if target.split(".")[0] == "torch":
                assert inside_function and path in readers, f"{path}:{line} imports torch"
