import os
import sys

# Tests import the project's top-level modules (backend, layers, model, ...).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
