"""LiteRT interpreters for the kernel's models, without LiteRT's start-up chatter.

LiteRT writes ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` to the
process's standard error (file descriptor 2, from C++) the first time a model's
tensors are allocated; no Python setting turns it off. `make_interpreter` captures
descriptor 2 around construction and passes every other line through unchanged.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Lines LiteRT prints that say nothing to a user.
_CHATTER = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)
_LOCK = threading.Lock()


@contextmanager
def _without_chatter() -> Iterator[None]:
    with _LOCK, tempfile.TemporaryFile(mode="w+b") as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
                if line.strip() not in _CHATTER:
                    sys.stderr.write(line)
            sys.stderr.flush()


def make_interpreter(model_bytes: bytes, num_threads: int | None) -> Any:
    """An allocated ``ai_edge_litert`` interpreter for ``model_bytes``; LiteRT's own
    errors (RuntimeError, ValueError) propagate for the caller to translate."""
    # Imported here so importing the kernel stays cheap.
    from ai_edge_litert.interpreter import Interpreter

    with _without_chatter():
        interpreter = Interpreter(model_content=model_bytes, num_threads=num_threads)
        interpreter.allocate_tensors()
    return interpreter
