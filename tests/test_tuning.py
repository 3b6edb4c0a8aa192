"""Per-machine kernel choices (fastlenet.tuning): measured once, kept per machine, reused,
switched off or redone by FASTLENET_TUNING, and never a crash over the file they live in.
The numba backend's variants of the linear layers' product are checked in test_numba.py."""

import json
import os
import subprocess
import sys
import time

import pytest

from fastlenet import tuning
from fastlenet.errors import ConfigError


def _sleeper(seconds):
    return lambda: time.sleep(seconds)


def _never():
    raise AssertionError("a kept or switched-off choice must not measure")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLENET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTLENET_TUNING", raising=False)
    # sleeps are steady enough to choose from, but not to a tenth on a busy machine
    monkeypatch.setattr(tuning, "STEADY", 10.0)
    monkeypatch.setattr(tuning, "ROUNDS", 3)
    return tmp_path / "cache" / "tuning.json"


def test_the_faster_variant_is_chosen_and_kept(cache):
    choice = tuning.choose("op", {"slow": _sleeper(0.004), "fast": _sleeper(0.0005)},
                           default="slow", threads=2)
    assert choice.variant == "fast" and choice.how.startswith("measured now")
    assert choice.times_us["slow"] > choice.times_us["fast"]
    kept = json.loads(cache.read_text())[tuning.machine_key(2)]["op"]
    assert kept["variant"] == "fast"
    again = tuning.choose("op", {"slow": _never, "fast": _never}, default="slow", threads=2)
    assert again.variant == "fast" and again.how == f"from {cache}"


def test_the_default_stays_unless_another_is_clearly_faster(cache):
    same = _sleeper(0.001)
    assert tuning.choose("op", {"a": same, "b": same}, default="b", threads=2).variant == "b"


def test_choices_are_kept_per_machine_and_op(cache):
    tuning.choose("op", {"slow": _sleeper(0.004), "fast": _sleeper(0.0005)},
                  default="slow", threads=2)
    # another thread count is another machine: measured anew, the first choice kept
    other = tuning.choose("op", {"slow": _sleeper(0.0005), "fast": _sleeper(0.004)},
                          default="fast", threads=1)
    assert other.variant == "slow"
    data = json.loads(cache.read_text())
    assert {m: v["op"]["variant"] for m, v in data.items()} == {
        tuning.machine_key(2): "fast", tuning.machine_key(1): "slow"}


def test_off_uses_the_default_and_retune_measures_again(cache, monkeypatch):
    monkeypatch.setenv("FASTLENET_TUNING", "off")
    assert tuning.choose("op", {"a": _never, "b": _never}, default="a", threads=2).variant == "a"
    assert not cache.exists()
    monkeypatch.setenv("FASTLENET_TUNING", "auto")
    tuning.choose("op", {"a": _sleeper(0.004), "b": _sleeper(0.0005)}, default="a", threads=2)
    monkeypatch.setenv("FASTLENET_TUNING", "retune")
    again = tuning.choose("op", {"a": _sleeper(0.0005), "b": _sleeper(0.004)}, default="b",
                          threads=2)
    assert again.variant == "a"
    assert json.loads(cache.read_text())[tuning.machine_key(2)]["op"]["variant"] == "a"


def test_a_bad_mode_is_one_line(cache, monkeypatch):
    monkeypatch.setenv("FASTLENET_TUNING", "fastest")
    with pytest.raises(ConfigError, match="FASTLENET_TUNING='fastest' is not a tuning mode; "
                                          "use one of auto, off, retune"):
        tuning.choose("op", {"a": _never}, default="a", threads=2)


def test_a_corrupt_file_is_rebuilt(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    choice = tuning.choose("op", {"a": _sleeper(0.004), "b": _sleeper(0.0005)}, default="a",
                           threads=2)
    assert choice.variant == "b"
    assert json.loads(cache.read_text())[tuning.machine_key(2)]["op"]["variant"] == "b"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_folder_still_chooses(cache):
    cache.parent.mkdir(parents=True)
    cache.parent.chmod(0o500)
    try:
        choice = tuning.choose("op", {"a": _sleeper(0.004), "b": _sleeper(0.0005)},
                               default="a", threads=2)
    finally:
        cache.parent.chmod(0o700)
    assert choice.variant == "b" and "not kept" in choice.how


def test_an_unwritable_file_still_chooses(cache):
    # a folder where the file should be: no user can write it, root included
    cache.mkdir(parents=True)
    choice = tuning.choose("op", {"a": _sleeper(0.004), "b": _sleeper(0.0005)}, default="a",
                           threads=2)
    assert choice.variant == "b" and "not kept" in choice.how


def test_unsteady_timings_choose_the_default_and_keep_nothing(cache, monkeypatch):
    monkeypatch.setattr(tuning, "STEADY", 0.10)
    times = iter([0.004, 0.004, 0.0005] + [0.004] * 100)  # two warm-up calls, then
    # "fast" is fast in its first round only
    def flaky():
        time.sleep(next(times))

    choice = tuning.choose("op", {"slow": _sleeper(0.002), "fast": flaky}, default="slow",
                           threads=2)
    assert choice.variant == "slow" and "too busy" in choice.how
    assert not cache.exists()


def test_steadiness():
    assert tuning._steady({"a": [10.0, 10.5, 30.0], "b": [5.0, 5.2, 5.1]})
    assert not tuning._steady({"a": [10.0, 12.0, 30.0], "b": [5.0, 5.2, 5.1]})


def test_info_shows_the_kept_choice(cache, tmp_path):
    tuning.choose("numba.gemm_nt.forward", {"4x4": _sleeper(0.004), "3x3": _sleeper(0.0005)},
                  default="4x4", threads=3)
    env = dict(os.environ, FASTLENET_CACHE_DIR=str(cache.parent), NUMBA_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-m", "fastlenet", "info"], capture_output=True,
                         text=True, env=env, check=True).stdout
    assert f"machine  {tuning.machine_key(3)}" in out
    assert "numba.gemm_nt.forward  3x3  (4x4 " in out
