"""Shared fixtures: the tiny config and the repository root."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import default  # noqa: E402


@pytest.fixture
def tiny():
  """A fresh tiny config (trains in well under a second after compiling)."""
  return default.get_config('tiny')
