"""Every folder with an __init__.py is a package of the distribution (a folder missing from the
package list works in an editable install and is missing from the wheel), and the package data
(the demo model, the kiosk's templates) is declared where it lies."""

from __future__ import annotations

import tomllib

from tests.helpers import REPO

TOPS = ("export", "runtime", "appliance")


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_name(folder, mapped: dict) -> str:
    rel = folder.relative_to(REPO)
    top = mapped.get(rel.parts[0], f"?{rel.parts[0]}")
    return ".".join((top, *rel.parts[1:]))


def test_every_python_folder_is_packaged():
    config = _setuptools()
    mapped = {folder: name for name, folder in config["package-dir"].items()}
    found = {_package_name(init.parent, mapped) for top in TOPS for init in (REPO / top).rglob("__init__.py")}
    assert found == set(config["packages"]), found ^ set(config["packages"])


def test_package_data_patterns_match_files():
    config = _setuptools()
    mapped = {name: folder for name, folder in config["package-dir"].items()}
    for package, patterns in config["package-data"].items():
        top, *rest = package.split(".")[1:]
        folder = REPO.joinpath(mapped[f"hipcad.{top}"], *rest)
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches nothing in {folder}"


def _requirements(extra: str | None) -> set[str]:
    """Distribution names a `pip install hipcad[extra]` asks for, following hipcad[...] self-references."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names, todo, seen = set(), [None] if extra is None else [None, extra], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for line in project["dependencies"] if current is None else project["optional-dependencies"][current]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == "hipcad":
                todo.extend(requirement.extras)
            else:
                names.add(canonicalize_name(requirement.name))
    return names


def test_no_install_puts_both_onnxruntime_packages_in_one_environment():
    """onnxruntime and onnxruntime-gpu install the same module; each comes from its own extra."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    both = {"onnxruntime", "onnxruntime-gpu"}
    assert not _requirements(None) & both
    for extra in extras:
        assert not both <= _requirements(extra), extra
    assert "onnxruntime" in _requirements("cpu") and "onnxruntime-gpu" in _requirements("gpu")
    assert "onnxruntime" in _requirements("test")  # the test suite runs on CPUs
    assert not _requirements("export") & both and not _requirements("appliance") & both
