"""Import-time choices shared by the command-line entry points."""

from __future__ import annotations

import sys


def keep_bitsandbytes_out() -> None:
    """Make ``import bitsandbytes`` fail in a process that will not quantize with it.

    peft (imported by the engine and by sentence-transformers) imports bitsandbytes eagerly when it is
    installed: ~0.9 s of a ~10 s ``hexcore ask``, and on a CPU-only machine a logged warning about missing
    kernels. transformers and peft then treat it as unavailable. No effect once it has been imported.
    """
    if "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # import -> ImportError, find_spec -> None
