"""The package shape DESIGN.md asks for: one wing per job, data flowing one way, no import cycle.

Imports are read from the source (lazy imports inside functions and TYPE_CHECKING blocks count),
so a back-edge fails here before it becomes a circle someone has to untangle.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Top-level modules every wing may use: the schema, the version, shared helpers.
BASE = {"agent", "agent.config", "agent.backoff", "agent.measure", "agent.keys", "agent.profiles", "agent.ids"}
# Wing (or top-level module) → the wings it may import, besides BASE and engines.
ALLOWED = {
    "agent.demo": set(),
    "agent.device": set(),
    "agent.capture": {"agent.demo"},
    "agent.pipeline": {"agent.capture", "agent.device"},  # the quality loop reads thermal zones and the CPU
    "agent.store": {"agent.pipeline"},  # object event messages are tracking's (agent.pipeline.object_event)
    "agent.sync": {"agent.store", "agent.device"},
    "agent.control": {"agent.capture", "agent.store", "agent.sync"},
    "agent.fleet": {"agent.sync"},
    "agent.web": {"agent.control", "agent.capture"},  # reads the device through control's CameraView
    "agent.runtime": {"agent.capture", "agent.pipeline", "agent.store", "agent.sync", "agent.control",
                      "agent.device", "agent.web"},
    "agent.cli": {"agent.capture", "agent.pipeline", "agent.store", "agent.sync", "agent.control", "agent.device",
                  "agent.fleet", "agent.demo", "agent.runtime", "agent.web"},
    "agent.__main__": {"agent.cli"},
}
# The schema composes what the wings define, as it composes engines' DetectorConfig: the source
# grammar lives with capture. That module imports nothing of the agent, so no circle can pass it.
BASE_MAY_IMPORT = {"agent.capture.sources"}
# The profiles' schema (agent.profiles, which the config's quality section checks its level against) is
# part of the schema too: data from profiles/, no wing.


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_by_module() -> dict[str, set[str]]:
    """Every module of agent/ and engines/ → the modules of agent/ and engines/ it imports."""
    files = [p for top in ("agent", "engines") for p in (ROOT / top).rglob("*.py")]
    known = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        mod = module_name(path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for name in names:
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    found.add(name)
        graph[mod] = found
    return graph


def wing(module: str) -> str:
    if module.startswith("engines"):
        return "engines"
    return ".".join(module.split(".")[:2])


GRAPH = imports_by_module()


def test_no_import_cycle_among_modules() -> None:
    # A package's __init__ naming its own modules is not a circle: leave packages out.
    packages = {m for m in GRAPH if (ROOT / Path(*m.split(".")) / "__init__.py").is_file()}
    modules = {m: deps - packages for m, deps in GRAPH.items() if m not in packages}
    try:
        graphlib.TopologicalSorter(modules).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_engines_import_nothing_of_the_agent() -> None:
    offenders = {m: sorted(d for d in deps if d.startswith("agent")) for m, deps in GRAPH.items()
                 if m.startswith("engines")}
    assert not {m: d for m, d in offenders.items() if d}


def test_each_wing_imports_only_the_wings_upstream_of_it() -> None:
    wrong = []
    for mod, deps in sorted(GRAPH.items()):
        if mod.startswith("engines"):
            continue
        own = wing(mod)
        for dep in sorted(deps):
            theirs = wing(dep)
            if theirs in (own, "engines") or dep in BASE:
                continue
            if own in BASE:
                if dep not in BASE_MAY_IMPORT:
                    wrong.append(f"{mod} -> {dep}")
            elif theirs not in ALLOWED.get(own, set()):
                wrong.append(f"{mod} -> {dep}")
    assert not wrong, "imports against the one-way flow:\n" + "\n".join(wrong)


def test_the_schemas_one_wing_import_stays_a_leaf() -> None:
    for module in BASE_MAY_IMPORT:
        assert not {d for d in GRAPH[module] if d.startswith("agent")}, module


def test_every_wing_is_known_to_the_table() -> None:
    wings = {wing(m) for m in GRAPH if not m.startswith("engines")} - BASE
    assert wings <= set(ALLOWED), sorted(wings - set(ALLOWED))


def test_package_inits_name_their_public_face_and_hold_no_logic() -> None:
    for init in [*(ROOT / "agent").rglob("__init__.py"), *(ROOT / "engines").rglob("__init__.py")]:
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{init.relative_to(ROOT)} has no docstring"
        logic = [n for n in tree.body[1:]
                 if not isinstance(n, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign))]
        assert not logic, f"{init.relative_to(ROOT)} holds more than imports and names"
