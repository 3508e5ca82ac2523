"""gensynth/runtime.py: the huge-page request the command line makes before torch allocates."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gensynth.runtime import HUGE_PAGES_ENV, prefer_huge_pages


@pytest.mark.parametrize("given,kept,on", [(None, "1", True), ("0", "0", False), ("2", "2", True),
                                           ("true", "true", False), (" 1 ", " 1 ", True)])
def test_prefer_huge_pages_sets_only_an_unset_variable_and_reads_it_as_pytorch_does(given, kept, on):
    env = {} if given is None else {HUGE_PAGES_ENV: given}
    assert prefer_huge_pages(env) is on
    assert env == {HUGE_PAGES_ENV: kept}


def test_the_command_line_sets_it_before_torch_is_imported():
    """A fresh interpreter (the point is the import order of a new process): the value the variable has at the
    moment ``torch`` is first imported, through the command line's module."""
    code = """
import os, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("THP_MEM_ALLOC_ENABLE"))
sys.meta_path.insert(0, Watch())
import gensynth.cli.main
import torch
print(seen)
"""
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['1']"
