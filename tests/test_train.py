"""The training loop end to end on a tiny MNIST cut: learning, run files, resume, stops."""

import json
import os

import numpy as np
import pytest

from fastlenet.checkpoint import load_checkpoint, load_model, save_checkpoint
from fastlenet.config import RECIPES, TrainConfig
from fastlenet.errors import CheckpointError, ConfigError, TrainingDivergedError
from fastlenet.evaluation import evaluate
from fastlenet.nn import build_model
from fastlenet.train import Trainer, train
from fastlenet.training_state import TrainingState


def tiny_config(tiny_dir, **kw):
    base = dict(dataset="custom", data_dir=str(tiny_dir), epochs=3, batch_size=64, val_size=200,
                seed=3, log_every=5)
    return TrainConfig(**{**base, **kw})


def test_fixed_seed_run_learns_and_writes_its_run_folder(tiny_dir, tmp_path, backend):
    out = tmp_path / "run"
    metrics = train(tiny_config(tiny_dir, backend=backend.name), out=out, log=None)

    losses = [s["loss"] for s in json.loads((out / "history.json").read_text())["steps"]]
    assert len(losses) == 3 * 16  # 1000 training images in batches of 64
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])
    assert metrics["test_accuracy"] > 0.7  # chance is 0.1
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "best_val_accuracy", "train_seconds", "epochs", "backend",
                "model", "parameters"):
        assert key in saved
    assert saved["parameters"] == 61706 and saved["epochs"] == 3 and saved["model"] == "lenet5"
    assert 0 <= saved["best_val_accuracy"] <= 1 and saved["backend"] == backend.name
    assert {p.name for p in out.iterdir()} == {"config.json", "history.json", "metrics.json",
                                               "last.npz", "best.npz"}


def test_same_seed_gives_the_same_run(tiny_dir, tmp_path):
    a = train(tiny_config(tiny_dir, epochs=1), out=tmp_path / "a", log=None)
    b = train(tiny_config(tiny_dir, epochs=1), out=tmp_path / "b", log=None)
    assert a["test_accuracy"] == b["test_accuracy"]
    ha = json.loads((tmp_path / "a" / "history.json").read_text())["steps"]
    hb = json.loads((tmp_path / "b" / "history.json").read_text())["steps"]
    assert ha == hb


@pytest.mark.parametrize("model, augment", [
    ("lenet5", False), ("compact", False),  # compact: dropout RNG, BatchNorm stats
    ("lenet5", True),  # the augmenter's RNG
])
def test_resume_equals_an_uninterrupted_run(tiny_dir, tmp_path, model, augment):
    config = tiny_config(tiny_dir, epochs=3, schedule="cosine", model=model, augment=augment)
    train(config, out=tmp_path / "straight", log=None)
    train(config, out=tmp_path / "interrupted", log=None, on_epoch_end=lambda record: record["epoch"] == 1)
    assert load_checkpoint(tmp_path / "interrupted").meta["epoch"] == 1
    train(resume=tmp_path / "interrupted", log=None)

    straight = load_checkpoint(tmp_path / "straight" / "last.npz")
    resumed = load_checkpoint(tmp_path / "interrupted" / "last.npz")
    assert straight.params.keys() == resumed.params.keys()
    for key in straight.params:
        np.testing.assert_array_equal(straight.params[key], resumed.params[key], err_msg=key)
    for key in straight.optim:
        np.testing.assert_array_equal(straight.optim[key], resumed.optim[key], err_msg=key)
    drop_times = lambda h: [{k: v for k, v in r.items() if "second" not in k} for r in h["epochs"]]
    assert drop_times(straight.meta["history"]) == drop_times(resumed.meta["history"])
    assert straight.meta["history"]["steps"] == resumed.meta["history"]["steps"]


def test_training_state_round_trips_through_checkpoint_meta(backend):
    """to_meta -> JSON -> restore gives the same counters, history and generators: the
    restored generators draw what the saved ones would have drawn next."""
    def fresh():
        return TrainingState(backend, np.random.default_rng(1), backend.default_rng(2),
                             backend.default_rng(3))

    saved = fresh()
    saved.shuffle_rng.permutation(10)
    saved.model_rng.random((5,), dtype=np.float32)
    saved.epoch, saved.step, saved.train_seconds = 2, 34, 5.5
    record = {"epoch": 1, "val_accuracy": 0.5}
    assert saved.record_epoch(record)
    assert not saved.record_epoch({"epoch": 2, "val_accuracy": 0.5})  # not better: not best
    saved.history["steps"].append({"step": 1, "loss": 2.0})
    meta = json.loads(json.dumps(saved.to_meta()))  # as a checkpoint stores it

    restored = fresh()
    restored.restore(meta)
    assert restored.to_meta() == saved.to_meta()
    assert (restored.best_epoch, restored.best_val_accuracy) == (1, 0.5)
    np.testing.assert_array_equal(restored.shuffle_rng.permutation(10), saved.shuffle_rng.permutation(10))
    for a, b in ((restored.model_rng, saved.model_rng), (restored.augment_rng, saved.augment_rng)):
        np.testing.assert_array_equal(backend.to_numpy(a.random((7,), dtype=np.float32)),
                                      backend.to_numpy(b.random((7,), dtype=np.float32)))
    with pytest.raises(KeyError):
        fresh().restore({k: v for k, v in meta.items() if k != "step"})
    with pytest.raises(ValueError):
        fresh().restore({**meta, "history": []})


def test_settings_default_to_the_recipe_of_the_augment_setting(tiny_dir, tmp_path):
    for augment, recipe in ((False, "fast"), (True, "augment")):
        config = TrainConfig(augment=augment).validate()
        assert config.recipe == recipe
        assert {k: getattr(config, k) for k in RECIPES[recipe]} == RECIPES[recipe]
    assert RECIPES["fast"] != RECIPES["augment"] != RECIPES["classic"]
    given = TrainConfig(augment=True, epochs=3, lr=1e-3, beta2=0.9).validate()  # given values win
    assert (given.epochs, given.lr, given.beta2, given.batch_size) == (3, 1e-3, 0.9, 128)
    classic = TrainConfig(recipe="classic", augment=True).validate()  # a named recipe wins too
    assert (classic.epochs, classic.batch_size) == (8, 128) and classic.augment
    # a run records the values it used, so a resume keeps them
    train(tiny_config(tiny_dir, epochs=None, lr=None, batch_size=None, augment=True,
                      train_limit=128), out=tmp_path / "r", log=None,
          on_epoch_end=lambda record: True)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["recipe"], saved["epochs"], saved["lr"], saved["beta2"]) == (
        "augment", RECIPES["augment"]["epochs"], RECIPES["augment"]["lr"], RECIPES["augment"]["beta2"])
    assert load_checkpoint(tmp_path / "r").meta["config"]["epochs"] == RECIPES["augment"]["epochs"]


@pytest.mark.parametrize("bad, message", [
    (dict(recipe="quick"), "unknown recipe 'quick'; choose one of: fast, augment, classic"),
    (dict(beta2=1.0), "--beta2 must be in [0, 1), got 1.0"),
    (dict(beta1=float("nan")), "--beta1 must be a finite number, got nan"),
])
def test_bad_recipe_settings_are_one_line(bad, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**bad).validate()
    assert str(info.value) == message


def test_adams_betas_reach_the_optimizer(tiny_dir, tmp_path):
    trainer = Trainer(tiny_config(tiny_dir, beta1=0.8, beta2=0.95), out=tmp_path / "r", log=None)
    assert (trainer.optimizer.beta1, trainer.optimizer.beta2) == (0.8, 0.95)
    sgd = Trainer(tiny_config(tiny_dir, optimizer="momentum"), out=tmp_path / "s", log=None)
    assert sgd.optimizer.kind == "sgd"  # betas are Adam's; other optimizers ignore them


def test_a_run_saved_before_recipes_resumes_with_the_classic_one(tiny_dir, tmp_path):
    """Its config has no recipe, betas or None fields: the classic recipe's betas fill them,
    which were the only ones then."""
    train(tiny_config(tiny_dir, epochs=1, train_limit=256, recipe="classic"), out=tmp_path / "r",
          log=None)
    path = tmp_path / "r" / "last.npz"
    checkpoint = load_checkpoint(path)
    legacy = {k: v for k, v in checkpoint.meta["config"].items()
              if k not in ("recipe", "beta1", "beta2")}
    save_checkpoint(path, checkpoint.params, checkpoint.optim,
                    {**checkpoint.meta, "config": legacy})
    metrics = train(resume=tmp_path / "r", epochs=2, log=None)
    assert metrics["epochs"] == 2
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["recipe"], saved["beta1"], saved["beta2"]) == ("classic", 0.9, 0.999)


def test_target_accuracy_stops_early(tiny_dir, tmp_path):
    metrics = train(tiny_config(tiny_dir, epochs=5, target_accuracy=0.5), out=tmp_path / "r", log=None)
    assert metrics["epochs"] < 5
    assert "reached the target" in metrics["stop_reason"]


def test_diverging_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_dir, tmp_path):
    out = tmp_path / "r"

    def blow_up(record):  # after a good first epoch, weights no step can come back from
        for p in trainer.model.parameters():
            p.data *= 1e30

    trainer = Trainer(tiny_config(tiny_dir, epochs=3), out=out, log=None, on_epoch_end=blow_up)
    with pytest.raises(TrainingDivergedError, match=r"at epoch 2, step 17; .*last good checkpoint"):
        trainer.run()
    good = load_checkpoint(out / "last.npz")
    assert good.meta["epoch"] == 1
    assert all(np.isfinite(v).all() for v in good.params.values())


def test_a_new_run_does_not_overwrite_another(tiny_dir, tmp_path):
    train(tiny_config(tiny_dir, epochs=1), out=tmp_path / "r", log=None)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_config(tiny_dir, epochs=1), out=tmp_path / "r", log=None)


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "--epochs"), ("lr", -1.0, "--lr"), ("model", "resnet", "unknown model"),
    ("target_accuracy", 99.0, "fraction"), ("val_size", -1, "--val-size"),
    ("optimizer", "lbfgs", "unknown optimizer"), ("schedule", "warm", "unknown schedule"),
    ("seed", -1, "--seed"), ("epochs", "3", "integer"), ("dtype", "float16", "--dtype"),
    ("weight_decay", float("inf"), "finite"), ("target_accuracy", "0.9", "finite"),
    ("train_limit", 2.5, "integer"), ("epochs", True, "integer"),
    ("augment", "yes", "augment must be True or False"),
    ("augment_rotate", -5.0, "--augment-rotate must be in"),
])
def test_bad_config_values_are_named(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value}).validate()


def test_numpy_scalars_are_valid_option_values():
    TrainConfig(epochs=np.int64(3), lr=np.float32(1e-3), seed=np.int32(1)).validate()


def test_evaluate_matches_a_direct_count(tiny_dir):
    from fastlenet.data import load_dataset, prepare

    data = prepare(load_dataset(None, tiny_dir), val_size=0)
    model = build_model("lenet5", "numpy", seed=0)
    loss, accuracy, preds = evaluate(model, data.x_test, data.y_test, batch_size=128)
    proba = model.predict_proba(data.x_test)
    np.testing.assert_array_equal(preds, proba.argmax(axis=1))
    assert accuracy == pytest.approx((proba.argmax(axis=1) == data.y_test).mean())
    expected = -np.log(proba[np.arange(len(proba)), data.y_test]).mean()
    assert loss == pytest.approx(expected, rel=1e-4)


def test_checkpoint_writes_are_atomic_and_corruption_is_reported(tmp_path):
    model = build_model("lenet5", "numpy", seed=0)
    path = tmp_path / "c.npz"
    save_checkpoint(path, model.state_dict(), {}, {"model": "lenet5", "dtype": "float32",
                                                   "mean": 0.13, "std": 0.31})
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    loaded, meta = load_model(path, "numpy")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:5000])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a checkpoint at all")
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    for bad, message in ((truncated, "not a checkpoint"), (garbage, "not a checkpoint"),
                         (plain, "not a fastlenet checkpoint"), (tmp_path / "missing.npz", "no such")):
        with pytest.raises(CheckpointError, match=message) as info:
            load_checkpoint(bad)
        assert "\n" not in str(info.value)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    compact = build_model("compact", "numpy", seed=0)
    path = tmp_path / "mislabelled.npz"
    save_checkpoint(path, compact.state_dict(), {}, {"model": "lenet5", "dtype": "float32",
                                                     "mean": 0.13, "std": 0.31})
    with pytest.raises(CheckpointError, match="another model|shape|unexpected|missing"):
        load_model(path, "numpy")


def test_a_run_interrupted_before_its_first_checkpoint_starts_again_on_resume(tiny_dir, tmp_path):
    """Ctrl-C in the first epoch leaves only config.json; the message says what --resume
    does with it, and it does that: the run trains from the start with its saved settings."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import run_cli

    out = tmp_path / "run"
    options = ["--data-dir", str(tiny_dir), "--limit", "480", "--val-size", "200", "--batch-size", "16",
               "--epochs", "2", "--seed", "5", "--backend", "numpy", "--no-progress"]
    process = subprocess.Popen([sys.executable, "-m", "fastlenet", "train", *options, "--out",
                                str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (out / "config.json").exists():
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and not (out / "last.npz").exists()
    assert stderr.strip() == (f"fastlenet: interrupted in epoch 1 of 2; no checkpoint was written "
                              f"yet; fastlenet train --resume {out} starts it again from the "
                              "beginning with its saved settings")
    resumed = run_cli("train", "--resume", out, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines()[0] == (f"{out} stopped before its first checkpoint: "
                                              "training it again from the beginning with its saved settings")
    straight = run_cli("train", *options, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    want, got = load_checkpoint(tmp_path / "straight"), load_checkpoint(out)
    assert got.meta["epoch"] == 2
    for key in want.params:
        np.testing.assert_array_equal(got.params[key], want.params[key], err_msg=key)


def test_an_interrupted_run_names_its_last_checkpoint(tiny_dir, tmp_path):
    def stop_after_first(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        train(tiny_config(tiny_dir, epochs=3, train_limit=128), out=tmp_path / "r", log=None,
              on_epoch_end=stop_after_first)
    assert str(info.value) == (f"interrupted in epoch 1 of 3; {tmp_path / 'r' / 'last.npz'} holds "
                               f"epoch 1; continue with: fastlenet train --resume {tmp_path / 'r'}")
    assert not (tmp_path / "r" / ".fastlenet.lock").exists()  # released on the way out


def test_ctrl_c_outside_a_training_is_one_plain_line(monkeypatch, capsys):
    from fastlenet import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_model", interrupted)
    assert cli.main(["summary"]) == 130
    assert capsys.readouterr().err == "fastlenet: interrupted\n"
