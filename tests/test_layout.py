"""The repository's shape: no import circle among the project's modules, a test file for every
top-level module with logic, no top-level file over the size a reader takes in at once, and
the README's Layout naming every module."""
import ast
import glob
import os

from helpers import ROOT

MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py")))


def top_level_imports(name):
    """The top-level modules `name`.py imports at its top level, in order."""
    with open(os.path.join(ROOT, f"{name}.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module.split(".")[0])
    return found


def project_imports(name):
    """The project's modules that `name`.py imports, anywhere in it (function-level imports too)."""
    with open(os.path.join(ROOT, f"{name}.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return sorted(found & set(MODULES) - {name})


def test_no_import_circle():
    graph = {m: project_imports(m) for m in MODULES}
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for n in graph[m]:
            visit(n)
        path.pop()
        done.add(m)

    for m in MODULES:
        visit(m)


def test_every_module_with_logic_has_its_test_file_and_files_stay_small():
    for name in MODULES:
        with open(os.path.join(ROOT, f"{name}.py"), encoding="utf-8") as f:
            text = f.read()
        assert len(text.splitlines()) <= 350, f"{name}.py has {len(text.splitlines())} lines"
        if any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in ast.parse(text).body):
            assert os.path.exists(os.path.join(ROOT, "tests", f"test_{name}.py")), f"{name}.py has no tests/test_{name}.py"


def test_the_readme_layout_names_every_module():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n## ", 1)]
    missing = [m for m in MODULES if f"`{m}.py`" not in layout]
    assert not missing, missing


def test_every_module_sets_the_pytensor_flags_before_pytensor_is_imported():
    """Imported first, by itself, any module of the project loads flags.py (float32, the compile
    cache) before pytensor: directly, or through a project module that does."""
    memo = {}

    def safe(name):  # (imports pytensor only after flags, loads flags)
        if name not in memo:
            memo[name] = (True, False)
            loaded, ok = name == "flags", True
            for module in top_level_imports(name):
                if module == "flags":
                    loaded = True
                elif module == "pytensor":
                    ok = ok and loaded
                elif module in MODULES:
                    sub_ok, sub_loads = safe(module)
                    ok, loaded = ok and (loaded or sub_ok), loaded or sub_loads
            memo[name] = (ok, loaded)
        return memo[name]

    unsafe = [m for m in MODULES if not safe(m)[0]]
    assert not unsafe, f"these import pytensor before flags: {unsafe}"
