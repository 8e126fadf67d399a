"""Every folder with an __init__.py is a package of the distribution (a folder missing from the
package list works in an editable install and is missing from the wheel)."""

from __future__ import annotations

import tomllib

from .conftest import REPO


def test_every_python_folder_is_packaged():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {folder: name for name, folder in config["package-dir"].items()}
    found = {
        mapped.get(str(init.parent.relative_to(REPO)))
        or f"?{init.parent.relative_to(REPO)}"
        for top in ("export", "runtime", "appliance")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert found == set(config["packages"]), found ^ set(config["packages"])
