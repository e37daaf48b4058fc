"""The process's settings (flags.py): float32, and large arrays kept mapped between steps."""
import platform
import resource

import numpy as np
import pytensor
import pytest

import flags


def test_float32_is_the_process_default():
    assert pytensor.config.floatX == flags.FLOATX == "float32"


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_a_freed_large_array_is_reused_without_page_faults():
    """A 64 MB array allocated again after it was freed (every training step's logits) takes
    its memory back from malloc's heap: no fresh pages to fault in (glibc's default maps and
    unmaps it, a few hundred faults or more each time)."""
    assert flags.keep_large_arrays_mapped()
    a = np.ones(1 << 24, np.float32)
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(1 << 24, np.float32)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 20
    assert a.sum() == 1 << 24
