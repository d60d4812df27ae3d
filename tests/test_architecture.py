"""The direction of imports is the architecture: read the package's imports (AST) and hold them to the layers.

`LAYERS` names each layer's modules and `MAY_IMPORT` the layers each may
import, written once here and drawn in the README's "What is inside". Every
import counts, those inside functions too: a lazy import hides a circle
from Python, not from this test.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ddpm_keras"

# Each module of ddpm_keras (a dotted name under it, or a package and all it holds) in one layer.
LAYERS = {
    "utils": ("utils", "visualize"),
    "math": ("diffusion",),
    "network": ("nn",),
    "samplers": ("samplers",),
    "data": ("data",),
    "metrics": ("metrics",),
    "inference": ("inference",),
    "training": ("training",),
    "model": ("options", "presets", "preset_builder", "hub", "model", "classifier", "convert", "posthoc_ema", "distillation"),
    "app": ("", "__main__", "cli"),
    # Former module names that keep working for users; nothing in the package imports them.
    "aliases": ("callbacks", "distribute", "finite", "layers", "precision", "sampling"),
}

# The layers each layer may import besides itself: imports run one way, up this list.
MAY_IMPORT = {
    "utils": (),
    "math": ("utils",),
    "network": ("utils",),
    "samplers": ("utils", "math"),
    "data": ("utils",),
    "metrics": ("utils",),
    "inference": ("utils", "math", "samplers"),
    "training": ("utils", "math", "samplers", "metrics"),
    "model": ("utils", "math", "network", "samplers", "inference", "training"),
    "app": ("utils", "math", "network", "samplers", "data", "metrics", "inference", "training", "model"),
    "aliases": ("utils", "samplers", "network", "inference", "training"),
}


def module_name(path):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module):
    """The layer of a module: the longest prefix of `LAYERS` that holds it."""
    best = None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if module == prefix or (prefix and module.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (layer, prefix)
    if best is None:
        raise AssertionError(f"ddpm_keras.{module} is in no layer: add it to LAYERS in {__file__}")
    return best[0]


def imports_of(module):
    """The modules of ddpm_keras that `module` imports (anywhere in it), as dotted names under the package."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == "ddpm_keras"]
            found.update(_resolve(name[len("ddpm_keras") + 1 :]) for name in names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(part for part in base + (node.module or "").split(".") if part)
            elif node.module and node.module.split(".")[0] == "ddpm_keras":
                target = node.module[len("ddpm_keras") + 1 :]
            else:
                continue
            for alias in node.names:
                child = f"{target}.{alias.name}" if target else alias.name
                found.add(child if child in MODULES else _resolve(target))
    found.discard(module)
    return found


def _resolve(name):
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def wrong_imports(graph):
    """Each import of `graph` that goes against `MAY_IMPORT`, as one line."""
    wrong = []
    for module, imported in sorted(graph.items()):
        layer = layer_of(module)
        allowed = set(MAY_IMPORT[layer]) | {layer}
        wrong += [
            f"ddpm_keras.{module} ({layer}) imports ddpm_keras.{other} ({layer_of(other)}); {layer} may import "
            f"only {sorted(allowed)}"
            for other in sorted(imported) if layer_of(other) not in allowed
        ]
    return wrong


def test_imports_run_down_the_layers():
    assert not wrong_imports(GRAPH), "\n".join(wrong_imports(GRAPH))


def test_no_import_circle():
    circles = [component for component in _strongly_connected(GRAPH) if len(component) > 1]
    assert not circles, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in circles)


def _strongly_connected(graph):
    """Tarjan's strongly connected components of `graph` (iterative)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def test_the_checks_fail_on_a_wrong_import_and_a_circle():
    """A sampler importing the training steps breaks both rules; each check says so."""
    graph = {**GRAPH, "samplers.ddim": GRAPH["samplers.ddim"] | {"training.steps"}}
    assert wrong_imports(graph) == [
        "ddpm_keras.samplers.ddim (samplers) imports ddpm_keras.training.steps (training); samplers may import "
        "only ['math', 'samplers', 'utils']"
    ]
    graph["training.steps"] = GRAPH["training.steps"] | {"samplers.ddim"}
    assert {"samplers.ddim", "training.steps"} in _strongly_connected(graph)
    assert "samplers.ddim" in GRAPH and "inference.generate" in GRAPH["model"]


def test_modules_stay_short():
    """A module past about 400 lines is split by concept."""
    long = {module: len(path.read_text().splitlines()) for module, path in MODULES.items()}
    assert not {module: n for module, n in long.items() if n > 420}, sorted(long.items(), key=lambda kv: -kv[1])[:3]
