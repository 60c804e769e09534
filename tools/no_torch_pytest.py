"""pytest with torch unimportable, as on a machine without it (torch is an optional extra):
the NumPy front end must work there, and every test that needs torch must skip, not fail.

    python tools/no_torch_pytest.py [pytest arguments]        (default: -q tests)
"""
import sys

sys.modules["torch"] = None  # from here on, `import torch` raises ImportError

import pytest  # noqa: E402

raise SystemExit(pytest.main(sys.argv[1:] or ["-q", "tests"]))
