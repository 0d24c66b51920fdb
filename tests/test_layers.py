"""The floors of ARCHITECTURE.md hold: nothing low imports anything high, and no import cycle.

Every module of ``l2rw_jax/`` is read with ``ast`` (nothing is imported) and every import in
it counts, those inside function bodies and under ``if TYPE_CHECKING`` too: an import deferred
into a function is still a dependency, and hiding one there is how a cycle goes unseen.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "l2rw_jax"

# The parts of the library, top to bottom as ARCHITECTURE.md draws them: (name, files or
# folders relative to the repository root, what the part is). Every module is in exactly one.
PARTS = [
    ("Face", ["l2rw_jax/__init__.py"], "the curated public surface"),
    (
        "Composer",
        ["l2rw_jax/train.py", "l2rw_jax/build.py", "l2rw_jax/compose.py"],
        "wires the config to library arguments and objects; the loop",
    ),
    ("Audit", ["l2rw_jax/audit/"], "beyond accuracy"),
    (
        "Run",
        [
            "l2rw_jax/backends.py",
            "l2rw_jax/backend_base.py",
            "l2rw_jax/tfdata_backend.py",
            "l2rw_jax/device_backend.py",
            "l2rw_jax/device_call.py",
            "l2rw_jax/members.py",
            "l2rw_jax/evaluate.py",
            "l2rw_jax/results.py",
            "l2rw_jax/chrono.py",
        ],
        "what a run needs: members, feeds, evaluation, timing",
    ),
    (
        "Config",
        [
            "l2rw_jax/config.py",
            "l2rw_jax/config_schema.py",
            "l2rw_jax/config_upgrade.py",
            "l2rw_jax/from_config.py",
        ],
        "schema, validation, upgrade, pure translations",
    ),
    ("IO", ["l2rw_jax/workdir.py"], "the run's paths, writers, readers, checkpoints"),
    (
        "Data",
        [
            "l2rw_jax/datasets.py",
            "l2rw_jax/array_source.py",
            "l2rw_jax/tfds_source.py",
            "l2rw_jax/corruption.py",
            "l2rw_jax/flips.py",
            "l2rw_jax/subsets.py",
            "l2rw_jax/label_checks.py",
            "l2rw_jax/image_folder.py",
            "l2rw_jax/input_pipeline.py",
            "l2rw_jax/stream_order.py",
            "l2rw_jax/device_splits.py",
            "l2rw_jax/device_batches.py",
            "l2rw_jax/digits_builder.py",
        ],
        "sources, corruptions, batches",
    ),
    (
        "Core",
        [
            "l2rw_jax/reweight.py",
            "l2rw_jax/safe_derivative.py",
            "l2rw_jax/methods.py",
            "l2rw_jax/weighing.py",
            "l2rw_jax/l2rw_scheme.py",
            "l2rw_jax/l2rw_stages.py",
            "l2rw_jax/correction.py",
            "l2rw_jax/step.py",
            "l2rw_jax/train_state.py",
        ],
        "the meta-step and the schemes",
    ),
    ("Factory", ["l2rw_jax/model_factory.py"], "create_model: the zoo or the user's module"),
    ("Adapter", ["l2rw_jax/adapter.py"], "any Linen module -> the model contract"),
    (
        "Zoo",
        ["l2rw_jax/models.py", "l2rw_jax/pooling.py", "l2rw_jax/conv.py"],
        "the library's own models",
    ),
    (
        "Platform",
        [
            "l2rw_jax/sharding.py",
            "l2rw_jax/distributed.py",
            "l2rw_jax/xla_options.py",
            "l2rw_jax/_optional.py",
            "l2rw_jax/files.py",
        ],
        "devices, hosts, compiler options, optional packages, atomic files",
    ),
]
PART_NAMES = [name for name, _, _ in PARTS]

# (part A, part B, why): no module of A imports a module of B.
NEVER = (
    [
        ("IO", "Config", "the workdir stores files, reads no config"),
        ("Run", "Config", "members and feeds take plain values"),
        ("Config", "Run", "the schema does not build what it configures"),
        ("Zoo", "Adapter", "the zoo knows no user modules; a factory above"),
        ("Core", "Config", "the core takes arguments, never the config"),
        ("Data", "Config", "sources and corruptions take arguments"),
        ("Data", "Composer", "data never reaches up to the loop"),
        ("Core", "Composer", "the core never reaches up to the loop"),
        ("Zoo", "Factory", "the factory builds the zoo's models, not the other way"),
        ("Adapter", "Factory", "the factory calls the adapter, not the other way"),
        ("Data", "IO", "sources write through files.atomic_write, not the run's workdir"),
        ("IO", "Run", "the workdir stores files, builds no members or feeds"),
        ("IO", "Composer", "the workdir stores files, wires no run"),
        ("Config", "Composer", "the schema never reaches up to the loop"),
        ("Run", "Composer", "members and feeds never reach up to the loop"),
        ("Zoo", "Core", "models know nothing of the meta-step"),
    ]
    + [
        (part, "Face", "the public surface is for users; the library imports its modules")
        for part in PART_NAMES
        if part != "Face"
    ]
    + [
        ("Platform", part, "devices, hosts and files are the floor: they import no other part")
        for part in PART_NAMES
        if part != "Platform"
    ]
)
# Entry points (experiments/, benchmarks/) sit above the library: it never imports them.
ENTRY = ("experiments", "benchmarks")


def _modules() -> dict[str, str]:
    """{dotted module name: path relative to ROOT} of every module of the package."""
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT).replace(os.sep, "/")
                parts = rel[:-3].split("/")
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = rel
    return out


MODULES = _modules()


def _imported(name: str, rel: str) -> set[str]:
    """Every name ``name``'s module imports (anywhere in it, function bodies included), as the
    package module it resolves to where it is one, else the imported name itself."""
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        tree = ast.parse(f.read(), rel)
    package = name if rel.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in MODULES else base)
    return out


IMPORTS = {name: _imported(name, rel) for name, rel in MODULES.items()}
GRAPH = {
    name: sorted(m for m in imported if m in MODULES and m != name)
    for name, imported in IMPORTS.items()
}


def _part(name: str) -> list[str]:
    rel = MODULES[name]
    return [
        part
        for part, files, _ in PARTS
        if any(rel == f or (f.endswith("/") and rel.startswith(f)) for f in files)
    ]


def test_every_module_is_in_exactly_one_part():
    placed = {name: _part(name) for name in MODULES}
    assert {n: p for n, p in placed.items() if len(p) != 1} == {}
    listed = [f for _, files, _ in PARTS for f in files]
    assert [f for f in listed if not os.path.exists(os.path.join(ROOT, f))] == []


def test_function_body_imports_are_seen():
    # build imports device_call, members input_pipeline only inside functions: the walk sees
    # them (a walk of the top level alone would pass with a cycle hidden in a function).
    assert "l2rw_jax.device_call" in GRAPH["l2rw_jax.build"]
    assert "l2rw_jax.input_pipeline" in GRAPH["l2rw_jax.members"]


@pytest.mark.parametrize("low, high, why", NEVER, ids=[f"{a}-{b}" for a, b, _ in NEVER])
def test_part_never_imports(low, high, why):
    broken = [
        f"{m} imports {d}"
        for m in MODULES
        if _part(m) == [low]
        for d in GRAPH[m]
        if _part(d) == [high]
    ]
    assert broken == [], f"{low} never imports {high} ({why}): {broken}"


def test_the_library_never_imports_the_entry_points():
    assert {
        m: sorted(i for i in imported if i.split(".")[0] in ENTRY)
        for m, imported in IMPORTS.items()
        if any(i.split(".")[0] in ENTRY for i in imported)
    } == {}


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None (depth-first search)."""
    done, on_path, path = set(), set(), []

    def visit(m):
        path.append(m)
        on_path.add(m)
        for d in graph[m]:
            if d in on_path:
                return path[path.index(d) :] + [d]
            if d not in done:
                found = visit(d)
                if found:
                    return found
        on_path.discard(path.pop())
        done.add(m)
        return None

    for m in sorted(graph):
        if m not in done:
            found = visit(m)
            if found:
                return found
    return None


def test_cycle_search_finds_a_cycle():
    assert _cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert _cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_no_import_cycle():
    assert _cycle(GRAPH) is None


def test_architecture_md_draws_every_module():
    with open(os.path.join(ROOT, "ARCHITECTURE.md"), encoding="utf-8") as f:
        diagram = f.read().split("```")[1]  # the module diagram: the first block
    missing = [
        rel
        for rel in MODULES.values()
        if rel.count("/") == 1 and os.path.basename(rel) not in diagram
    ]
    assert missing == []
    assert all(name.upper() in diagram for name in PART_NAMES)
