"""The measurable "done means" of issue 20, counted from the source with ``ast`` (nothing is imported or run).

    python scripts/check_architecture.py          # each metric, its limit and its offenders; exit 1 if one is over

Definitions (tests/test_architecture.py holds the limits to them):

- **import cycles**: a graph of the modules under ``pipeline/`` and ``models/``; a package's ``__init__.py`` is its
  own module (``pipeline.fusion``). Every ``import``/``from ... import`` anywhere in a file counts, inside functions
  and ``if TYPE_CHECKING:`` blocks too. ``import a.b.c`` and ``from a.b import c`` give an edge to ``a.b.c`` when that
  is a module, else to ``a.b`` (a name from the package's ``__init__``); relative imports are resolved. The implicit
  import of a parent package's ``__init__`` is not an edge (``pipeline/__init__.py`` is kept light for that).
  A cycle is a strongly connected component of more than one module, or a module importing itself.
- **sync model name comparisons**: ``ast.Compare`` nodes (``==``, ``!=``, ``in``, ``not in``, ``is``) and ``case``
  value patterns in ``pipeline/`` (outside ``pipeline/sync/``) and ``scripts/`` where one side is a sync model's name:
  a string constant in ``SYNC_MODEL_NAMES`` (alone or in a tuple/list/set literal), the name ``SYNC_MODELS`` (any
  attribute chain ending in it), an attribute or subscript chain ending in ``sync.model`` / ``["sync"]["model"]``,
  or a variable or attribute named ``sync_model``. A dict display keyed by sync model names and looked up at once
  (``{"wav2lip": ...}.get(model)``, ``{...}[model]``) is a comparison too. One node is one place.
- **config casts**: calls of ``int``, ``float``, ``str``, ``bool`` or ``tuple`` with one positional argument and no
  keywords, in ``pipeline/`` and ``scripts/``, whose argument is an attribute/subscript chain (at least one step)
  rooted at a config-like name: ``cfg``, ``config``, ``conf``, ``settings``, ``section``, ``params``, those with a
  ``_suffix`` (``cfg_diarise``) or as a suffix (``sync_cfg``, ``gestsync_settings``), or ``self.<such a name>``.
- **long functions**: every ``def`` (methods and nested functions too) in ``pipeline/``, ``models/`` and
  ``scripts/`` spanning more than ``MAX_FUNCTION_LINES`` lines, from its ``def`` line to its last line.
- **cache file name literals**: string constants (f-string parts included, docstrings not) in ``pipeline/`` and
  ``scripts/`` that are exactly a cache file name: any ``name.pckl`` or one of ``OTHER_CACHE_NAMES``; a name written
  in more than ``MAX_FILES_PER_CACHE_NAME`` files is an offender.

The two measuring tools (this script and ``compare_outputs.py``, which name models and cache files to inspect them)
are left out of the name comparisons, casts and cache names.
"""
from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GRAPH_ROOTS = ("pipeline", "models")
SOURCE_ROOTS = ("pipeline", "scripts")  # name comparisons, casts, cache names
LENGTH_ROOTS = ("pipeline", "models", "scripts")
SYNC_PACKAGE = "pipeline/sync/"  # where comparing a sync model's name is the package's own business
# The measuring tools name cache files and models to inspect them; they are not counted in the source metrics.
MEASURING_TOOLS = frozenset({"scripts/check_architecture.py", "scripts/compare_outputs.py"})

SYNC_MODEL_NAMES = frozenset({"syncnet", "wav2lip", "gestsync"})
CAST_FUNCTIONS = frozenset({"int", "float", "str", "bool", "tuple"})
CONFIG_ROOT = re.compile(r"^(cfg|config|conf|settings|section|params)(_\w+)?$|^\w+_(cfg|config|conf|settings|section)$")
CACHE_PCKL = re.compile(r"^[a-z][a-z0-9_]*\.pckl$")
OTHER_CACHE_NAMES = frozenset({"audio.wav", "video.avi", "offsets.txt", "source.json", "stage_seconds.json"})

MAX_CYCLES = 0
MAX_SYNC_NAME_COMPARISONS = 3
MAX_CONFIG_CASTS = 20
MAX_FUNCTION_LINES = 80
MAX_FILES_PER_CACHE_NAME = 3


@dataclass(frozen=True)
class Place:
    """One offending spot: ``path:line`` and what is there."""

    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def python_files(roots: tuple[str, ...], repo: Path = REPO) -> Iterator[Path]:
    for root in roots:
        yield from sorted(p for p in (repo / root).rglob("*.py") if "__pycache__" not in p.parts)


def rel(path: Path, repo: Path = REPO) -> str:
    return path.relative_to(repo).as_posix()


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


# ---- import cycles -------------------------------------------------------------------------------------------------

def module_name(path: Path, repo: Path = REPO) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(repo: Path = REPO, roots: tuple[str, ...] = GRAPH_ROOTS) -> dict[str, dict[str, list[int]]]:
    """module -> {imported module of the graph -> the lines importing it}."""
    files = {module_name(p, repo): p for p in python_files(roots, repo)}
    graph: dict[str, dict[str, list[int]]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, list[int]] = defaultdict(list)
        for node in ast.walk(parse(path)):
            for target in _import_targets(node, package, files):
                if target in files and node.lineno not in edges[target]:
                    edges[target].append(node.lineno)
        graph[name] = dict(edges)
    return graph


def _import_targets(node: ast.AST, package: str, modules: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [_deepest_module(alias.name, modules) for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = package.split(".") if package else []
        base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    targets = []
    for alias in node.names:
        full = f"{stem}.{alias.name}" if stem else alias.name
        targets.append(full if full in modules else _deepest_module(stem, modules))
    return targets


def _deepest_module(dotted: str, modules: dict) -> str:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return dotted


def import_cycles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, {}):
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found, key=lambda c: (-len(c), c))


def cycle_edges(graph: dict[str, dict[str, list[int]]], component: list[str], repo: Path = REPO) -> list[Place]:
    """The imports inside one cycle, as places (the importing file and line)."""
    members = set(component)
    files = {module_name(p, repo): p for p in python_files(GRAPH_ROOTS, repo)}
    return [Place(rel(files[src], repo), line, f"imports {dst}")
            for src in component for dst, lines in sorted(graph[src].items()) if dst in members for line in lines]


# ---- sync model name comparisons -----------------------------------------------------------------------------------

def _chain(node: ast.AST) -> list[str]:
    """``a.b["c"].d`` -> ["a", "b", "c", "d"]; other steps (calls, non-string subscripts) as "?"."""
    steps = []
    while True:
        if isinstance(node, ast.Attribute):
            steps.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript):
            key = node.slice
            steps.append(key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else "?")
            node = node.value
        elif isinstance(node, ast.Name):
            steps.append(node.id)
            return steps[::-1]
        else:
            steps.append("?")
            return steps[::-1]


def names_sync_model(node: ast.AST) -> bool:
    """Whether ``node`` is a sync model's name, a collection of them, or a value holding one (see the docstring)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in SYNC_MODEL_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(names_sync_model(elt) for elt in node.elts if isinstance(elt, ast.Constant))
    if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
        chain = _chain(node)
        return chain[-1] in ("SYNC_MODELS", "sync_model") or chain[-2:] == ["sync", "model"]
    return False


def sync_name_comparisons(repo: Path = REPO) -> list[Place]:
    places = []
    for path in python_files(SOURCE_ROOTS, repo):
        name = rel(path, repo)
        if name.startswith(SYNC_PACKAGE) or name in MEASURING_TOOLS:
            continue
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Compare) and any(names_sync_model(side) for side in (node.left, *node.comparators)):
                places.append(Place(name, node.lineno, ast.unparse(node)[:100]))
            elif _dict_dispatch(node):
                places.append(Place(name, node.lineno, ast.unparse(node)[:100]))
            elif isinstance(node, ast.match_case) and _case_names_sync_model(node.pattern):
                places.append(Place(name, node.pattern.lineno, f"case {ast.unparse(node.pattern)[:90]}"))
    return places


def _dict_dispatch(node: ast.AST) -> bool:
    """``{"wav2lip": a, ...}[x]`` or ``{"wav2lip": a, ...}.get(x, ...)``."""
    if isinstance(node, ast.Subscript):
        table = node.value
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"):
        table = node.func.value
    else:
        return False
    return isinstance(table, ast.Dict) and any(key is not None and names_sync_model(key) for key in table.keys)


def _case_names_sync_model(pattern: ast.pattern) -> bool:
    if isinstance(pattern, ast.MatchValue):
        return names_sync_model(pattern.value)
    if isinstance(pattern, ast.MatchOr):
        return any(_case_names_sync_model(p) for p in pattern.patterns)
    return False


# ---- config casts --------------------------------------------------------------------------------------------------

def is_config_value(node: ast.AST) -> bool:
    if not isinstance(node, (ast.Attribute, ast.Subscript)):
        return False
    chain = _chain(node)
    if chain[0] == "self" and len(chain) > 2:
        chain = chain[1:]
    return bool(CONFIG_ROOT.match(chain[0])) and len(chain) > 1


def config_casts(repo: Path = REPO) -> list[Place]:
    places = []
    for path in python_files(SOURCE_ROOTS, repo):
        if rel(path, repo) in MEASURING_TOOLS:
            continue
        for node in ast.walk(parse(path)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CAST_FUNCTIONS
                    and len(node.args) == 1 and not node.keywords and is_config_value(node.args[0])):
                places.append(Place(rel(path, repo), node.lineno, ast.unparse(node)[:100]))
    return places


# ---- long functions ------------------------------------------------------------------------------------------------

def long_functions(repo: Path = REPO, limit: int = MAX_FUNCTION_LINES) -> list[Place]:
    places = []
    for path in python_files(LENGTH_ROOTS, repo):
        for node in ast.walk(parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    places.append(Place(rel(path, repo), node.lineno, f"{node.name}: {lines} lines"))
    return places


# ---- cache file name literals --------------------------------------------------------------------------------------

def is_cache_name(text: str) -> bool:
    return bool(CACHE_PCKL.match(text)) or text in OTHER_CACHE_NAMES


def cache_name_files(repo: Path = REPO) -> dict[str, list[Place]]:
    """cache file name -> one place per file that writes it as a literal (its first line there)."""
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for path in python_files(SOURCE_ROOTS, repo):
        if rel(path, repo) in MEASURING_TOOLS:
            continue
        tree = parse(path)
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and is_cache_name(node.value)):
                found[node.value].setdefault(rel(path, repo), node.lineno)
    return {name: [Place(p, line, name) for p, line in sorted(files.items())] for name, files in sorted(found.items())}


def cache_name_offenders(repo: Path = REPO, limit: int = MAX_FILES_PER_CACHE_NAME) -> dict[str, list[Place]]:
    return {name: places for name, places in cache_name_files(repo).items() if len(places) > limit}


# ---- report --------------------------------------------------------------------------------------------------------

def report(repo: Path = REPO) -> tuple[list[str], bool]:
    """The printed report and whether every metric is within its limit (long-function exceptions aside)."""
    lines, ok = [], True
    graph = import_graph(repo)
    cycles = import_cycles(graph)
    ok &= len(cycles) <= MAX_CYCLES
    lines.append(f"import cycles among {len(graph)} pipeline/ and models/ modules: {len(cycles)} (limit {MAX_CYCLES})")
    for component in cycles:
        lines.append(f"  cycle of {len(component)}: {', '.join(component)}")
        lines.extend(f"    {place}" for place in cycle_edges(graph, component, repo))
    comparisons = sync_name_comparisons(repo)
    ok &= len(comparisons) <= MAX_SYNC_NAME_COMPARISONS
    lines.append(f"sync model name comparisons outside {SYNC_PACKAGE}: {len(comparisons)} (limit {MAX_SYNC_NAME_COMPARISONS})")
    lines.extend(f"  {place}" for place in comparisons)
    casts = config_casts(repo)
    ok &= len(casts) <= MAX_CONFIG_CASTS
    lines.append(f"config value casts: {len(casts)} (limit {MAX_CONFIG_CASTS})")
    lines.extend(f"  {place}" for place in casts)
    long = long_functions(repo)
    ok &= not long
    lines.append(f"functions over {MAX_FUNCTION_LINES} lines: {len(long)} (limit 0)")
    lines.extend(f"  {place}" for place in long)
    names = cache_name_files(repo)
    offenders = {name: places for name, places in names.items() if len(places) > MAX_FILES_PER_CACHE_NAME}
    ok &= not offenders
    lines.append(f"cache file names written as a literal in more than {MAX_FILES_PER_CACHE_NAME} files: "
                 f"{len(offenders)} of {len(names)} (limit 0)")
    for name, places in offenders.items():
        lines.append(f"  {name} in {len(places)} files: {', '.join(p.path for p in places)}")
    return lines, ok


def main() -> int:
    lines, ok = report()
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
