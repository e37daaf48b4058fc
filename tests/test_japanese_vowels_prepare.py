"""data/japanese_vowels/prepare.py: the .ts format parsed, bad lines named."""
import os

import numpy as np
import pytest

from helpers import ROOT


def load_vowels_prepare():
    import importlib.util

    path = os.path.join(ROOT, "data", "japanese_vowels", "prepare.py")
    spec = importlib.util.spec_from_file_location("japanese_vowels_prepare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ts_parser_reads_series_and_names_bad_lines():
    prepare = load_vowels_prepare()
    text = ["#comment", "@problemName X", "@data", "1,2,3:4,5,6:1", "7:8:2"]
    series, labels = prepare.parse_ts(text, "x.ts", channels=2)
    assert labels == [1, 2]
    np.testing.assert_array_equal(series[0], [[1, 4], [2, 5], [3, 6]])
    assert series[1].shape == (1, 2)
    with pytest.raises(ValueError, match="x.ts:4: 1 channels, expected 2"):
        prepare.parse_ts(["@data", "1:2:1", "#", "1,2:1"], "x.ts", channels=2)
    with pytest.raises(ValueError, match="x.ts:2: channels of different lengths"):
        prepare.parse_ts(["@data", "1,2:3:1"], "x.ts", channels=2)
