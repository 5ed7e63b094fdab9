"""The package's imports run one way: config -> models/data -> tasks -> train -> run folders ->
sweeps / analysis -> tools and the command line. Every `import` statement counts, including
the ones inside functions (the package imports heavy modules where they are used).
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "mnv2_jax"

# Bottom to top; a module may import its own layer and the layers below it, never above.
# Names on one line are one layer; `INDEPENDENT` pairs of that layer must not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("spec", "workdir", "wandb_mode", "allocator", "quiet"),
    ("accounting", "config"),
    ("nn",),
    ("models", "data"),
    ("tasks",),
    ("train",),
    ("runs",),
    ("sweeps", "analysis"),
    ("tools",),
    ("cli", "__main__", "__init__"),
]
INDEPENDENT = [("models", "data"), ("sweeps", "analysis")]


def top_name(module: str) -> str | None:
    """`mnv2_jax.train.loop` -> `train`; None for other packages."""
    parts = module.split(".")
    if parts[0] != "mnv2_jax":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"mnv2_jax.{name} is in no layer of {__name__}.LAYERS: add it")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            # `from mnv2_jax import tasks` imports the sub-package `tasks`.
            if module == "mnv2_jax":
                out += [
                    (node.lineno, f"mnv2_jax.{alias.name}")
                    for alias in node.names
                    if (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").is_file()
                ]
    return out


def back_edges() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        source_top = top_name(source) if "." in source else "__init__"
        if path.name == "__main__.py":
            source_top = "__main__"
        for line, target in imports_of(path):
            target_top = top_name(target)
            if target_top is None or target_top == "__init__" or target_top == source_top:
                continue
            low, high = layer_of(source_top), layer_of(target_top)
            pair = tuple(sorted((source_top, target_top)))
            if high > low or (high == low and pair in {tuple(sorted(p)) for p in INDEPENDENT}):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {source} imports {target}")
    return found


def test_every_top_level_module_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if not p.name.startswith("_")}
    names = {n for n in names if n not in ("py", "pycache")}
    for name in names:
        layer_of(name)


def test_no_import_runs_back_up():
    edges = back_edges()
    assert not edges, "imports against the layering:\n" + "\n".join(edges)


def test_the_check_sees_a_back_edge(tmp_path):
    """A model importing the train loop is reported (the check is not vacuous)."""
    fake = tmp_path / "mnv2_jax"
    (fake / "models").mkdir(parents=True)
    (fake / "train").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "models" / "__init__.py").write_text("")
    (fake / "train" / "__init__.py").write_text("")
    (fake / "models" / "bad.py").write_text("def f():\n    from mnv2_jax.train import loop\n")
    globals()["PACKAGE"] = fake
    try:
        edges = back_edges()
    finally:
        globals()["PACKAGE"] = pathlib.Path(__file__).resolve().parent.parent / "mnv2_jax"
    assert edges == ["mnv2_jax/models/bad.py:2: mnv2_jax.models.bad imports mnv2_jax.train"]
