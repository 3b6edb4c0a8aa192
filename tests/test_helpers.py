"""The shared checks in tests/helpers.py accept what they should and reject the rest."""

import subprocess

import pytest

from helpers import assert_one_line_error


def _process(stderr: str, returncode: int = 2):
    return subprocess.CompletedProcess(["fastlenet"], returncode, "", stderr)


@pytest.mark.parametrize("stderr", [
    "fastlenet: error: no such checkpoint x.npz\n",
    "fastlenet: error: argument command: invalid choice: 'bake' (see 'fastlenet --help')\n",
    "fastlenet train: error: argument --lr: not a number: 'fast' (see 'fastlenet train --help')\n",
])
def test_one_line_error_accepts_both_forms(stderr):
    assert_one_line_error(_process(stderr), "error: ")
    assert_one_line_error(stderr, "error: ")


@pytest.mark.parametrize("stderr, returncode", [
    ("fastlenet: error: bad --lr\n", 1),                                     # exit status
    ("Traceback (most recent call last):\nfastlenet: error: bad --lr\n", 2),  # a traceback
    ("fastlenet: error: bad --lr\nand more\n", 2),                           # two lines
    ("error: bad --lr\n", 2),                                               # no program
    ("fastlenet train: error: bad --lr\n", 2),                               # no --help hint
    ("fastlenet train: error: bad --lr (see 'fastlenet sweep --help')\n", 2),
    ("fastlenet: error: bad --epochs\n", 2),                                 # no fragment
])
def test_one_line_error_rejects_the_rest(stderr, returncode):
    with pytest.raises(AssertionError):
        assert_one_line_error(_process(stderr, returncode), "--lr")
