"""DecodeConfig (decode_config.py): the decoding settings sample.py and evaluate.py share, with
one set of checks, which both scripts' settings extend."""
import math

import pytest

from configurator import ConfigError
from decode import MAX_BEAM, MAX_LEN
from decode_config import DecodeConfig
from evaluate import EvalConfig
from sample import SampleConfig


@pytest.mark.parametrize("changes, message", [
    (dict(beam_size=0), f"beam_size=0: must be between 1 and {MAX_BEAM}"),
    (dict(max_len=MAX_LEN + 1), f"max_len={MAX_LEN + 1}: must be between 1 and {MAX_LEN}"),
    (dict(length_norm=math.nan), "length_norm=nan: must be a finite number"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size=-1: must not be negative"),
    (dict(unk_penalty=-1.0), "unk_penalty=-1.0: must not be negative"),
    (dict(mode="GPU"), "mode='GPU': use one of CVM"),
])
def test_one_set_of_checks_for_both_scripts(changes, message):
    for cls in (DecodeConfig, SampleConfig, EvalConfig):
        cls().check()
        with pytest.raises(ConfigError, match=message):
            cls(**changes).check()


def test_the_search_settings_reach_decode_generate():
    cfg = EvalConfig(beam_size=4, no_repeat_ngram_size=3)
    assert cfg.search() == dict(beam_size=4, length_norm=1.0, unk_penalty=math.inf, no_repeat_ngram_size=3)
    assert (SampleConfig().max_len, EvalConfig().max_len) == (60, 100)  # each script's own default


def test_a_beam_is_bounded_by_the_memory_it_needs():
    from types import SimpleNamespace

    model = SimpleNamespace(tgt_vocab=[None] * 6000)
    DecodeConfig(beam_size=5).check_memory(model, 64)
    DecodeConfig(beam_size=1).check_memory(model, 10**9)  # greedy holds no beam
    with pytest.raises(ConfigError, match=r"beam_size=1000: a beam over 10,000,000 sentence\(s\) of a 6,000-word "
                                          r"vocabulary needs about .* GiB a step; .* GiB is free"):
        DecodeConfig(beam_size=1000).check_memory(model, 10**7)

