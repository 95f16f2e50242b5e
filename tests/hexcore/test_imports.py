"""keep_bitsandbytes_out in a fresh interpreter: peft and transformers still import, without bitsandbytes."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from hexcore.imports import keep_bitsandbytes_out
keep_bitsandbytes_out()
import peft
from transformers.utils import is_bitsandbytes_available
print(sys.modules["bitsandbytes"] is None, is_bitsandbytes_available())
"""


def test_peft_imports_without_bitsandbytes_and_transformers_sees_it_unavailable() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
    assert "gemm_4bit" not in done.stderr  # bitsandbytes' CPU kernel warning never appears


def test_it_leaves_an_already_imported_module_alone() -> None:
    code = "import sys, types\nsys.modules['bitsandbytes'] = types.ModuleType('bitsandbytes')\n"
    code += "from hexcore.imports import keep_bitsandbytes_out\nkeep_bitsandbytes_out()\n"
    code += "print(sys.modules['bitsandbytes'] is not None)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
