"""Shared test set-up: the project's top-level modules are imported from the repository root."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Real annotation files (VQA-RAD with 6 images, SLAKE) live beside the checkout.
SHARED_DATA = os.environ.get("INFIMED_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
