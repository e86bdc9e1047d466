"""The project's import graph, read with `ast` (imports inside functions included): no cycle, project modules
imported at the top of a file, and no module importing a command's entry point (train, generate, evaluate, bench)."""
import ast
import os

from conftest import ROOT

# Commands a user runs, at the root, that nothing imports: the top of the graph. The libraries behind the last
# three live in packages (plumbing/spectral.py, songs/synth.py, songs/corpus.py).
ENTRY_POINTS = {"train", "generate", "evaluate", "bench", "spectral", "synth", "corpus", "app"}
# The paper's method and the codec interface, at the root beside the commands; everything else is in a package.
PAPER_MODULES = {"data", "model", "masking", "guidance", "decode", "codec"}
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


def test_the_walk_sees_the_modules_and_their_imports():
    graph, _ = import_graph()
    assert {"model", "codec", "plumbing.spectral", "plumbing.checkpoint", "train", "metrics.fad"} <= set(graph)
    assert "codec" in graph["plumbing.spectral"] and "plumbing.spectral" in graph["plumbing.checkpoint"]


def test_find_cycle_finds_one_and_only_one_that_is_there():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_project_import_graph_has_no_cycle():
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_project_modules_are_imported_at_the_top_of_a_file():
    """An import inside a function hides a dependency (and was how the codec <-> spectral cycle was dodged)."""
    _, in_functions = import_graph()
    assert {m: sorted(v) for m, v in in_functions.items() if v} == {}


def test_no_module_imports_an_entry_point_and_every_command_is_classified():
    graph, _ = import_graph()
    importers = {m: sorted(graph[m] & ENTRY_POINTS) for m in graph if graph[m] & ENTRY_POINTS}
    assert importers == {}, f"entry points are imported: {importers}"
    modules = project_modules()
    commands = set()
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            if '__name__ == "__main__"' in f.read():
                commands.add(name)
    assert commands == ENTRY_POINTS, "a new command: add it to ENTRY_POINTS"


def test_the_root_holds_the_paper_and_the_commands_and_packages_the_rest():
    """A reader who opens the repository sees the paper's files and the commands; the rest is grouped."""
    root = {m for m, path in project_modules().items() if os.path.dirname(path) == ROOT}
    assert root == PAPER_MODULES | ENTRY_POINTS
