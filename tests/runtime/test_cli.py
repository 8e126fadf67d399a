"""The command table's answer to a missing optional package: which extra to install."""

from __future__ import annotations

import sys
import types

from hipcad.runtime import cli


def test_missing_onnxruntime_names_the_cpu_and_the_gpu_extra(monkeypatch, capsys):
    def main(argv):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")

    monkeypatch.setitem(sys.modules, "hipcad_test_command", types.SimpleNamespace(main=main))
    monkeypatch.setitem(cli.COMMANDS, "needs-ort", ("hipcad_test_command:main", "a command that imports onnxruntime"))
    assert cli.main(["needs-ort"]) == 2
    err = capsys.readouterr().err
    assert "needs onnxruntime, which is not installed: pip install 'hipcad[cpu]' or pip install 'hipcad[gpu]'" in err
