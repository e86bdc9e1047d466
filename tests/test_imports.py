"""The project's import graph, read with `ast` (imports inside functions included), against declared layers.

Imports run one way: a module imports only from its own layer or below. No cycle between files, nor between
packages. Project modules are imported at the top of a file, but for
the lazy imports declared below. Nothing imports a root command.
"""
import ast
import os

from conftest import ROOT

# Top to bottom. A module belongs to the first layer with a prefix that names it (a package or a root file).
LAYERS = [
    ("commands", ["train", "generate", "evaluate", "bench", "app", "scripts"]),
    ("supports", ["training", "metrics", "notes", "songs", "page", "spectral.fit"]),
    ("paper", ["data", "model", "masking", "guidance", "decode", "codec"]),
    ("ground", ["audio", "spectral.dsp", "spectral", "cli"]),
]
# The one import up a layer, and why: the page adds parts with generate.py's own functions (reading the context,
# the stems in turn, the output names and the atomic writes), so that the page and the command cannot drift apart.
UPWARD = {("page.engine", "generate")}
# Imports inside a function, and why: the MIDI path (librosa, pretty_midi) loads only with --midi, matplotlib
# only with --plot.
LAZY = {("generate", "notes.midi"), ("generate", "metrics.pictures")}
ROOT_COMMANDS = {"train", "generate", "evaluate", "bench", "app"}
# Commands run as modules of their packages (python -m ...); they are libraries too, so they may be imported.
MODULE_COMMANDS = {"songs.synth", "songs.corpus", "spectral.fit", "training.ship", "training.curves",
                   "scripts.harmony_sampling", "scripts.harmony_lag", "scripts.harmony_gain"}
SKIPPED_DIRS = {"tests", "shared", "runs", "data"}


def project_modules() -> dict[str, str]:
    """{dotted module name: path} of every .py file of the repository (tests and hidden folders left out)."""
    modules = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")) and d not in SKIPPED_DIRS
                         and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg")))
        for f in files:
            if f.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = os.path.join(folder, f)
    return modules


def imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement may bind a module to (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1] if node.level else []
    stem = ".".join(base + ([node.module] if node.module else []))
    return [stem] + [f"{stem}.{a.name}" if stem else a.name for a in node.names]


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({module: project modules it imports}, {module: project modules it imports inside a function})."""
    modules = project_modules()
    graph, in_functions = {}, {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        graph[name], in_functions[name] = set(), set()
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(n) for fn in functions for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            is_package = path.endswith("__init__.py")
            for target in imported_names(node, name, is_package):
                # `import a.b` binds a and imports both; a name imported from a module counts as that module
                found = [m for m in modules if target == m or target.startswith(m + ".")]
                for m in found:
                    if m != name:
                        graph[name].add(m)
                        if id(node) in nested:
                            in_functions[name].add(m)
    return graph, in_functions


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def layer_of(module: str) -> int:
    """The index in LAYERS of a module's layer (0 is the top)."""
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_imports.py")


def folder_of(module: str) -> str:
    """The package a module is in (a root file: itself)."""
    return module.split(".")[0]


def test_the_walk_sees_the_modules_and_their_imports():
    graph, in_functions = import_graph()
    assert {"model", "codec", "spectral.dsp", "training.checkpoint", "train", "metrics.fad"} <= set(graph)
    assert "spectral.dsp" in graph["codec"] and "codec" in graph["training.checkpoint"]
    assert "notes.midi" in in_functions["generate"]


def test_find_cycle_finds_one_and_only_one_that_is_there():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_every_module_has_a_layer_and_imports_run_down_the_layers():
    graph, _ = import_graph()
    upward = {(m, n) for m, targets in graph.items() for n in targets if layer_of(n) < layer_of(m)}
    assert upward == UPWARD, f"imports up a layer: {sorted(upward - UPWARD)} (declare and justify, or move the code)"
    assert len(UPWARD) <= 1


def test_the_paper_files_stand_on_the_ground_alone():
    """model.py imports nothing of the project (its numbers are in ModelConfig); the paper's files import only
    each other and the ground."""
    graph, _ = import_graph()
    assert graph["model"] == set()
    paper = dict(LAYERS)["paper"]
    for m in paper:
        assert all(layer_of(n) >= layer_of(m) for n in graph[m]), (m, graph[m])


def test_the_project_import_graph_has_no_cycle_between_files_or_folders():
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    folders = {}   # the packages (codec.py and its package spectral/ are one concept, and may lean on each other)
    for m, targets in graph.items():
        if "." in m:
            folders.setdefault(folder_of(m), set()).update(folder_of(n) for n in targets
                                                           if "." in n and folder_of(n) != folder_of(m))
    cycle = find_cycle(folders)
    assert cycle is None, "folder cycle: " + " -> ".join(cycle)


def test_project_modules_are_imported_at_the_top_of_a_file_but_the_declared_lazy_ones():
    """An import inside a function hides a dependency; the declared ones keep heavy packages off a path."""
    _, in_functions = import_graph()
    found = {(m, n) for m, v in in_functions.items() for n in v if not any(o.startswith(n + ".") for o in v)}
    assert found == LAZY


def test_no_module_imports_a_root_command_and_every_command_is_classified():
    graph, _ = import_graph()
    importers = {m: sorted(graph[m] & ROOT_COMMANDS) for m in graph if graph[m] & ROOT_COMMANDS
                 and (m, *graph[m] & ROOT_COMMANDS) not in UPWARD}
    assert importers == {}, f"commands are imported: {importers}"
    commands = set()
    for name, path in project_modules().items():
        with open(path, encoding="utf-8") as f:
            if '__name__ == "__main__"' in f.read():
                commands.add(name)
    assert commands == ROOT_COMMANDS | MODULE_COMMANDS, "a new command: add it to ROOT_COMMANDS or MODULE_COMMANDS"


def test_the_root_holds_the_papers_files_and_the_commands_only():
    """The card's eight files, codec.py, app.py and bench.py; everything else is in a package named for its
    concern."""
    root = {m for m, path in project_modules().items() if os.path.dirname(path) == ROOT}
    assert root == {"data", "model", "masking", "decode", "guidance", "train", "generate", "evaluate", "codec",
                    "app", "bench"}
    packages = {m.split(".")[0] for m in project_modules()} - root
    assert not packages & {"plumbing", "utils", "helpers", "common", "misc", "lib"}
