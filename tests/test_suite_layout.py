"""The suite's own layout: the test folders have no __init__.py, so pytest imports each test file by its basename
(rootdir-relative 'rootdir' import mode); two files with one basename stop collection on a clean checkout
('import file mismatch'), which a warm tree's __pycache__ can hide."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_two_test_modules_share_a_basename():
    names = Counter(p.name for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)
    assert not [n for n, k in names.items() if k > 1 and n != "__init__.py"], "rename one of them"
