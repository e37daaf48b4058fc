"""ModelConfig (model_config.py): impossible settings are one line naming the setting, the
parameter estimate bounds what initModules() builds, a model too big for memory is refused."""
import pytest

from configurator import ConfigError
from model import Model
from model_config import ModelConfig


@pytest.mark.parametrize("changes, message", [
    (dict(hidden_size=0), "hidden_size=0: must be positive"),
    (dict(dropout=1.0), r"dropout=1.0: must be in \[0, 1\)"),
    (dict(zoneout=float("nan")), "zoneout=nan: must be a finite number"),
    (dict(input_feeding=True), "input_feeding=true needs an attention"),
    (dict(cell="lstm", reset_after=True), "reset_after=true is a GRU setting; no slot has a GRU"),
    (dict(attention="nope"), "attention='nope': unknown attention 'nope'"),
    (dict(encoder_cell="nope"), "encoder_cell='nope': unknown cell 'nope'"),
])
def test_impossible_settings_are_one_line(changes, message):
    ModelConfig().check()
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes).check()


@pytest.mark.parametrize("changes", [dict(), dict(cell="lstm", bidirectional=True, attention="coverage",
                                                   input_feeding=True, encoder_layers=2)])
def test_the_parameter_estimate_bounds_the_model(changes):
    config = ModelConfig(embed_size=6, hidden_size=8, src_vocab_size=20, tgt_vocab_size=30, **changes)
    built = sum(p.get_value().size for p in Model(config).params)
    assert built <= config.approx_param_count() < 3 * built


def test_a_model_beyond_free_memory_is_refused_before_it_is_built():
    with pytest.raises(ConfigError, match=r"hidden_size=1000000, embed_size=128: the model needs about .* GiB"):
        ModelConfig(hidden_size=1_000_000, src_vocab_size=6000, tgt_vocab_size=6000).check_memory()
