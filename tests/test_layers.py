"""The layering, read from the source: core -> engine -> Lightning glue -> config and command line.

Every import of every module (top-level or inside a function) is read with ``ast``; the rules are the
architecture's promises: the math and the loop know nothing of Lightning, Hydra or the config layer, the
glue never reaches up into the config layer or the command line, only the entry points import the launcher,
and no two modules import each other in a circle.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dream_pl"
CORE = {  # the math, the data, the models and the sets: torch (and faiss, torchvision) only
    "augment", "clustering", "coreset", "data", "diagnostics", "errors", "features", "files", "graphs",
    "initializers", "matchers", "models", "samplers", "schemas", "seeding", "sharding", "synthetic",
}  # fmt: skip
ENGINE = {"engine"}
GLUE = {"distill", "ddp", "callbacks", "evaluation", "quiet"}  # Lightning around the engine
ABOVE_GLUE = {"config", "launch", "cli", "workflow", "train", "evaluate", "report", "dashboard"}
FRAMEWORKS = ("pytorch_lightning", "lightning", "lightning_fabric", "hydra", "omegaconf", "hydra_zen")


def modules() -> dict[str, Path]:
    """``data.sources`` -> its file, for every module of the package."""
    return {
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (absolute names; dream_pl's without the prefix)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n.removeprefix("dream_pl.") if n.startswith("dream_pl.") else n for n in names}


def top(name: str) -> str:
    return name.split(".")[0]


def own(names: set[str], known: dict[str, Path]) -> set[str]:
    return {n for n in names if n in known or top(n) in {top(k) for k in known}}


def test_core_and_engine_import_no_framework_and_nothing_above_them():
    known = modules()
    for name, path in known.items():
        if top(name) not in CORE | ENGINE:
            continue
        found = imports(path)
        assert not {n for n in found if top(n) in FRAMEWORKS}, (name, "imports a framework")
        allowed = CORE | (ENGINE if top(name) in ENGINE else set())
        above = {n for n in own(found, known) if top(n) not in allowed}
        assert not above, (name, "imports a layer above it", above)


def test_the_lightning_glue_never_reaches_into_the_config_layer_or_the_command_line():
    known = modules()
    for name, path in known.items():
        if top(name) in GLUE:
            reached = {n for n in own(imports(path), known) if top(n) in ABOVE_GLUE}
            assert not reached, (name, reached)


def test_only_the_entry_points_import_the_launcher():
    known = modules()
    users = {name for name, path in known.items() if "launch" in {top(n) for n in own(imports(path), known)}}
    assert users <= {"train", "evaluate"}, users


def test_no_two_modules_import_each_other_in_a_circle():
    known = modules()
    graph = {
        name: {n for n in own(imports(path), known) if n in known and n != name}
        for name, path in known.items()
    }
    for start in graph:  # a depth-first walk from every module back to itself
        stack, seen = list(graph[start]), set()
        while stack:
            current = stack.pop()
            assert current != start, f"{start} imports itself through {sorted(seen)}"
            if current not in seen:
                seen.add(current)
                stack.extend(graph.get(current, ()))


def test_every_module_is_placed_in_a_layer():
    """A new module must be given a layer here (and so a rule), not slip between them."""
    placed = CORE | ENGINE | GLUE | ABOVE_GLUE | {"checkpoints", "runlock", "runner", "__init__", ""}
    assert {top(name) for name in modules()} <= placed
