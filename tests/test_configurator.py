"""Settings from defaults, TOML files and --key=value flags (configurator.py): later sources
win, values are cast to each field's type, and every mistake is one line naming the source."""
from dataclasses import dataclass

import pytest

from configurator import ConfigError, configure, help_text, require, setting


@dataclass
class Settings:
    max_iters: int = setting(10, "steps")
    learning_rate: float = setting(0.1, "step size")
    overwrite: bool = setting(False, "replace a run")
    dataset: str = setting("kjv", "data folder")


def test_later_sources_win_and_values_take_each_fields_type(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text('max_iters = 50\nlearning_rate = 1\ndataset = "kjv_es"\n')
    cfg = Settings()
    explicit = configure([cfg], [str(toml), "--max_iters=70", "--overwrite=yes"], "usage")
    assert (cfg.max_iters, cfg.learning_rate, cfg.overwrite, cfg.dataset) == (70, 1.0, True, "kjv_es")
    assert isinstance(cfg.learning_rate, float)
    assert explicit == {"max_iters", "learning_rate", "overwrite", "dataset"}


@pytest.mark.parametrize("argv, message", [
    (["--max_iter=5"], r"--max_iter=5: unknown setting 'max_iter' \(did you mean max_iters\?\)"),
    (["--max_iters=5.5"], r"--max_iters=5.5: max_iters='5.5' is not a valid int"),
    (["--overwrite=maybe"], "overwrite='maybe' is not a valid bool"),
    (["--max_iters"], "--max_iters: flags take the form --key=value"),
    (["max_iters=5"], "max_iters=5: expected a config/\\*.toml file or --key=value"),
    (["missing.toml"], "missing.toml: No such file or directory"),
])
def test_mistakes_are_one_line_naming_the_source(argv, message):
    with pytest.raises(ConfigError, match=message):
        configure([Settings()], argv, "usage")


def test_a_toml_file_of_the_wrong_types_or_syntax_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("max_iters = true\n")
    with pytest.raises(ConfigError, match=r"bad.toml: max_iters=True is not a valid int"):
        configure([Settings()], [str(bad)], "usage")
    bad.write_text("max_iters = = 3\n")
    with pytest.raises(ConfigError, match="bad.toml: "):
        configure([Settings()], [str(bad)], "usage")


def test_help_lists_every_setting_with_its_default_and_require_raises():
    text = help_text([Settings()], "usage: x")
    assert "--max_iters=10" in text and "step size" in text and text.startswith("usage: x")
    require(True, "never")
    with pytest.raises(ConfigError, match="^bad value$"):
        require(False, "bad value")
