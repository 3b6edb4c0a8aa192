"""A Ctrl-C at any moment of a command's start ends it with one line, never a traceback."""

import signal
import subprocess
import sys

import pytest

# runs `python -m fastlenet ARGS` after planting a finder that sends this process a real
# SIGINT the moment MODULE starts to import: a Ctrl-C while the libraries load, on cue
INTERRUPTED_START = """
import os, runpy, signal, sys
module, sys.argv = sys.argv[1], ["fastlenet", *sys.argv[2:]]
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == module:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlC())
runpy.run_module("fastlenet", run_name="__main__")
"""


@pytest.mark.parametrize("module", ["numpy", "fastlenet.cli", "fastlenet.train"])
def test_a_ctrl_c_while_the_libraries_load_prints_one_line(tiny_dir, tmp_path, module):
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_START, module, "train", "--data-dir", str(tiny_dir),
         "--limit", "64", "--val-size", "0", "--epochs", "1", "--backend", "numpy", "--out",
         str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == ["fastlenet: interrupted"], done.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("*.npz"))
