import os
import sys

# Tests import the flat top-level modules (model.py, data.py, ...) from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
FIXTURE = os.path.join(SHARED, "slakh-fixture")
