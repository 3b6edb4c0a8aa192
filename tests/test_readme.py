"""The README's Python example runs as written (docs/python-api.md opens with the same)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import write_tiny_mnist

ROOT = Path(__file__).resolve().parents[1]


def first_python_block(page: str, heading: str) -> str:
    text = (ROOT / page).read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


def test_the_python_api_snippet_runs(tmp_path):
    """Trained on a cut of MNIST (FASTLENET_DATA_DIR; 5,300 images, 5,000 of them held out
    for validation as by default) in a scratch folder, so that it takes seconds; every
    name it uses must be defined."""
    snippet = first_python_block("README.md", "## Python API")
    data = write_tiny_mnist(tmp_path / "data", n_train=5300, n_test=300)
    env = {**os.environ, "FASTLENET_DATA_DIR": str(data),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "demo" / "best.npz").is_file()
    assert "preprocess(" in snippet


def test_the_python_api_page_opens_with_the_readme_snippet():
    assert (first_python_block("docs/python-api.md", "## Training and loading models")
            == first_python_block("README.md", "## Python API"))
