import json

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.training.config import TrainConfig, make_config, parse_overrides, save_config


def test_presets_hold_their_values():
    paper = make_config("paper")
    assert (paper.optimizer, paper.lr_refiner, paper.lr_discriminator, paper.batch_size) == ("sgd", 0.001, 0.001, 512)
    assert (paper.pretrain_refiner_steps, paper.pretrain_discriminator_steps, paper.k_g, paper.k_d) == (1000, 200, 2, 1)
    assert make_config("eyes").model == "eyes" and make_config("digits").model == "digits"
    defaults = make_config("digits")
    assert not any((defaults.feature_matching, defaults.minibatch_discrimination, defaults.virtual_batch_norm,
                    defaults.historical_averaging, defaults.label_smoothing))


def test_file_then_overrides_with_types_checked(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('iterations = 7\nfeature_matching = true\nlr_refiner = 1\n')
    config = make_config("digits", str(toml), parse_overrides(["iterations=9", "label_smoothing=0.1", "psi=blur"]))
    assert (config.iterations, config.feature_matching, config.lr_refiner) == (9, True, 1.0)
    assert (config.label_smoothing, config.psi) == (0.1, "blur")
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"preset": "digits", "k_g": 3}))
    assert make_config("digits", str(js)).k_g == 3


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"itrations": "5"}, "did you mean 'iterations'"),
        ({"iterations": "many"}, "not an integer"),
        ({"feature_matching": "maybe"}, "not a boolean"),
        ({"momentum": "0.9"}, "SGD option"),
        ({"optimizer": "sgd", "adam_beta1": "0.9"}, "Adam options"),
        ({"minibatch_kernels": "4"}, "minibatch_discrimination is off"),
        ({"history_size": "10"}, "smaller than batch_size/2"),
        ({"batch_size": "7"}, "even"),
        ({"label_smoothing": "0.6"}, "only the real target"),
        ({"psi": "sobel"}, "psi must be one of"),
        ({"model": "huge"}, "not a network preset"),
        ({"self_reg_weight": "0"}, "self_reg_weight is 0"),
    ],
)
def test_bad_or_contradictory_options_are_refused_with_a_reason(overrides, message):
    with pytest.raises(UserError, match=message):
        make_config("digits", overrides=overrides)


def test_file_errors(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"preset": "paper"}))
    with pytest.raises(UserError, match="contradictory"):
        make_config("digits", str(other))
    broken = tmp_path / "broken.toml"
    broken.write_text("iterations = = 3")
    with pytest.raises(UserError, match="does not parse"):
        make_config("digits", str(broken))
    with pytest.raises(UserError, match="not found"):
        make_config("digits", str(tmp_path / "missing.json"))
    with pytest.raises(UserError, match="unknown preset"):
        make_config("huge")


def test_saved_config_guards_the_run_dir(tmp_path):
    save_config(str(tmp_path), TrainConfig(), "digits")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["preset"] == "digits" and saved["iterations"] == TrainConfig().iterations
    save_config(str(tmp_path), TrainConfig(), "digits")  # same options: fine (a resume)
    with pytest.raises(UserError, match="different options"):
        save_config(str(tmp_path), TrainConfig(iterations=1), "digits")


def test_cli_shows_option_errors_without_a_traceback(tmp_path):
    result = CliRunner().invoke(main, ["train", "--synthetic", str(tmp_path), "--real", str(tmp_path),
                                       "--out", str(tmp_path / "run"), "--set", "k_g=-1"])
    assert result.exit_code != 0
    assert "k_g must be >= 0" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["train", "--synthetic", str(tmp_path / "none"), "--real", str(tmp_path),
                                       "--out", str(tmp_path / "run2"), "--local"])
    assert result.exit_code != 0 and "synthetic folder not found" in result.output
