"""The house rules of imports (see the README's "How the code is laid out"):

- the device packages (``hipcad.runtime`` without its workstation subpackages, and
  ``hipcad.appliance``) never import the workstation packages (``hipcad.runtime.evaluation``,
  ``hipcad.runtime.synth``, ``hipcad.runtime.tools``, ``hipcad.runtime.serving``, ``hipcad.export``) or torch when they are
  imported, and the runtime's device packages not even inside a function, but for the few
  allowed below;
- ``hipcad.runtime`` never imports ``hipcad.appliance`` or ``hipcad.export``.

Every module is found with ``pkgutil.walk_packages`` (``iter_modules`` would skip subpackages).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys

import pytest

import hipcad.appliance
import hipcad.export
import hipcad.runtime

TOPS = (hipcad.runtime, hipcad.appliance, hipcad.export)

WORKSTATION = ("hipcad.runtime.evaluation", "hipcad.runtime.synth", "hipcad.runtime.tools", "hipcad.runtime.serving",
               "hipcad.export")
FORBIDDEN_FOR_DEVICE = (*WORKSTATION, "torch", "torchvision", "timm")
# (importing module, imported package): allowed inside a function only, for a reason
ALLOWED_LAZY = {
    ("hipcad.runtime.backends.pyt", "torch"),  # the PyTorch backend itself (--backend torch)
    ("hipcad.appliance.worker.intake", "hipcad.runtime.evaluation"),  # a dataset's labels for read-first studies
    ("hipcad.appliance.demo", "hipcad.runtime.synth"),  # hipcad demo draws its sample radiographs
}


def all_modules() -> list[str]:
    # from each of the three subpackages (``hipcad`` itself is a namespace package, which an
    # editable install serves through an import hook that pkgutil cannot list)
    return sorted({top.__name__ for top in TOPS}
                  | {m.name for top in TOPS for m in pkgutil.walk_packages(top.__path__, top.__name__ + ".")})


def is_under(name: str, packages) -> str | None:
    return next((p for p in packages if name == p or name.startswith(p + ".")), None)


def is_device(name: str) -> bool:
    return name.startswith(("hipcad.runtime", "hipcad.appliance")) and not is_under(name, WORKSTATION)


def imports_of(module: str) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement of ``module``."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, id(node) in top))
    return found


def test_every_package_is_walked():
    modules = all_modules()
    for package in ("hipcad.runtime.imaging", "hipcad.runtime.backends.trt", "hipcad.appliance.kiosk",
                    "hipcad.export.train", "hipcad.runtime.synth"):
        assert any(m.startswith(package + ".") for m in modules), package
    assert len(modules) > 80


@pytest.mark.parametrize("module", [m for m in all_modules() if is_device(m)])
def test_device_module_imports(module):
    for imported, top_level in imports_of(module):
        bad = is_under(imported, FORBIDDEN_FOR_DEVICE)
        if bad is None:
            continue
        if top_level:
            pytest.fail(f"{module} imports {imported} at module level")
        if module.startswith("hipcad.runtime") and (module, bad) not in ALLOWED_LAZY:
            pytest.fail(f"{module} imports {imported}; device code must not (allowed: {sorted(ALLOWED_LAZY)})")
        if module.startswith("hipcad.appliance") and bad != "hipcad.runtime.evaluation" and (module, bad) not in ALLOWED_LAZY:
            pytest.fail(f"{module} imports {imported}")
    if module.startswith("hipcad.runtime"):
        assert not any(is_under(i, ("hipcad.appliance",)) for i, _ in imports_of(module)), module


def test_importing_every_device_module_loads_no_workstation_code():
    """Transitively, in a fresh interpreter: importing the whole device side loads neither torch
    nor a workstation package."""
    device = [m for m in all_modules() if is_device(m) and not m.endswith("__main__")]
    code = (
        "import importlib, sys\n"
        f"for m in {device!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision') "
        f"or m.startswith({WORKSTATION!r}))\n"
        "print('\\n'.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"loaded by the device side: {proc.stdout}"
