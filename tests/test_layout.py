"""The house's floors: no import runs back up, every import circle is a registry inside one folder, and only the
pipeline (and the registries) resolve which method, filter and refiner run with which settings."""

import ast
from pathlib import Path

import promptseg

ROOT = Path(promptseg.__file__).parent
FLOORS = {  # a part may import its own floor's parts or lower ones, never higher
    "registry": 0, "text": 0, "data": 0, "extras": 0,
    "io": 1, "models": 1,
    "diffusion": 2,
    "methods": 3, "filters": 3, "refiners": 3,
    "pipeline": 4,
    "api": 5, "eval": 5, "training": 5,
    "labelling": 6, "demo": 6, "integrations": 6,
    "cli": 7,
}
STAGES = ("methods", "filters", "refiners")  # one floor, and none imports another


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every promptseg module -> the promptseg modules it imports (at the top or inside a function)."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        name, found = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("promptseg"):
                found.add(node.module)
            elif isinstance(node, ast.ImportFrom) and node.level:
                package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    package = package.rsplit(".", 1)[0]
                found.add(package + ("." + node.module if node.module else ""))
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("promptseg")}
        graph[name] = found
    return graph


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_part_has_a_floor():
    parts = {part(m) for m in imports()} - {""}
    assert parts <= set(FLOORS) | {"zoo"}, f"give these parts a floor: {sorted(parts - set(FLOORS))}"


def test_no_import_runs_back_up_the_floors():
    upward = []
    for module, targets in imports().items():
        for target in targets:
            here, there = part(module), part(target)
            if not here or not there or here == there or there == "zoo":
                continue
            if FLOORS[there] > FLOORS[here] or (here in STAGES and there in STAGES):
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_the_package_root_is_imported_for_its_version_only():
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "promptseg" and path.name != "__init__.py":
                assert [a.name for a in node.names] == ["__version__"], f"{path}: {ast.unparse(node)}"


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_import_circle_is_a_registry_inside_one_folder():
    graph = imports()
    files = {module_name(path): path for path in ROOT.rglob("*.py")}
    for component in cycles(graph):
        registries = [m for m in component if "Registry(" in files[m].read_text()]
        assert len({part(m) for m in component}) == 1 and registries, f"an import circle: {sorted(component)}"


def test_only_the_pipeline_and_the_registries_resolve_settings():
    resolvers = ("FILTERS.resolve(", "REFINERS.resolve(", "METHODS.resolve(", "recommended_config(", "model_settings(")
    allowed = {"promptseg.pipeline", "promptseg.registry", "promptseg.methods.base", "promptseg.models.zoo",
               "promptseg.models.loader", "promptseg.models.from_pipe", "promptseg.models"}  # loaders read a model's
    offenders = []
    for path in ROOT.rglob("*.py"):
        name = module_name(path)
        text = path.read_text()
        if name not in allowed and any(r in text for r in resolvers):
            offenders.append(name)
    assert not offenders, f"these resolve a stage's settings themselves: {offenders}; use promptseg.pipeline"
