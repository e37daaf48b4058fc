import os
import sys

import pytest

# Tests import the project's top-level modules (backend, layers, model, ...).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def tiny_reverse(tmp_path_factory):
    """A prepared 200-pair reverse task, shared by every test that runs train.py on it."""
    from helpers import prepare_tiny_reverse

    return prepare_tiny_reverse(tmp_path_factory.mktemp("reverse_tiny"))
