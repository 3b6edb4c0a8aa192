"""Messages name options as the user types them, as the command's parser spells them."""

import dataclasses

import pytest

from fastlenet.cli import _option_names, _train_actions, main
from fastlenet.config import TrainConfig, option_name

from helpers import assert_one_line_error, run_cli


def test_every_config_field_is_named_as_the_parser_spells_its_option():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {a.dest: a.option_strings for a in _train_actions() if a.dest in fields}
    assert options["train_limit"] == ["--limit"]  # the one whose field name differs
    assert len(options) == len(fields) - 1  # all but log_every, which has no option
    for field, strings in options.items():
        assert option_name(field) in strings, field
        assert _option_names()[field] in strings, field


@pytest.mark.parametrize("given, named", [
    (["--limit", "5"], "drop --limit (only --epochs may change)"),
    (["--augment-rotate", "5", "--batch-size", "8"], "drop --augment-rotate, --batch-size"),
    (["--val-size", "9", "--target-accuracy", "0.5"], "drop --target-accuracy, --val-size"),
])
def test_resume_names_the_options_it_refuses_as_typed(tmp_path, given, named, capsys):
    assert main(["train", "--resume", str(tmp_path), *given]) == 2
    assert_one_line_error(capsys.readouterr().err, named)


def test_a_resume_refusal_runs_as_a_user_sees_it(tmp_path):
    assert_one_line_error(run_cli("train", "--resume", tmp_path, "--limit", "5"), "drop --limit")


def test_augment_options_without_augment_are_named_as_typed(capsys):
    assert main(["train", "--augment-elastic", "3"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--augment-elastic sets up augmentation")
