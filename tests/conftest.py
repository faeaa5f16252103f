"""Shared test set-up: the project's top-level modules are imported from the repository root."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Real annotation files (VQA-RAD with 6 images, SLAKE) and the real Qwen2.5-VL chat template live
# beside the checkout; a plain clone does not have them, and the tests that read them skip.
SHARED_DATA = os.environ.get("INFIMED_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


def shared(*parts):
    """Path of a real file under SHARED_DATA; skips the calling test when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"needs the real file {path} (the repository does not ship it; set "
                    "INFIMED_SHARED_DATA to the folder that holds vqa_rad/, slake/ and the chat template)")
    return path


def shared_files(*parts):
    """Sorted files of a real folder under SHARED_DATA, or [] when it is absent (for parametrize)."""
    path = os.path.join(SHARED_DATA, *parts)
    return sorted(os.path.join(path, f) for f in os.listdir(path)) if os.path.isdir(path) else []


def pytest_configure(config):
    # `make test` runs everything; a developer iterating locally can leave the slow ones out with
    # `python -m pytest -q tests -m "not slow"` (each marked test says why it is slow).
    config.addinivalue_line("markers", "slow: takes tens of seconds (subprocesses, torchrun, compilation, the demo)")
