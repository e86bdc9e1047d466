import os
import sys

# Tests import the flat top-level modules (model.py, data.py, ...) from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# A tiny slice of Slakh2100 (CC BY 4.0), vendored: see tests/fixtures/slakh/README.md.
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "slakh")
