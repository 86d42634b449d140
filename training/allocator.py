"""Run training processes on tcmalloc instead of glibc's malloc.

TensorFlow's input pipeline and kernels allocate and free image-sized buffers all the
time. glibc serves blocks over its mmap threshold with ``mmap`` and returns them with
``munmap``, so every batch faults its memory in again: on a 2-core machine a training
step spent a fifth to a half of its time in the kernel (measured in the README,
"Training on tcmalloc"). tcmalloc keeps freed memory for reuse. It must be loaded
before anything else allocates, so the process restarts itself once with the library
in ``LD_PRELOAD``; where the library is not installed it goes on with glibc's malloc.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: Debian's libtcmalloc-minimal4 (``apt-get install libtcmalloc-minimal4``) and the
#: usual other places for it.
LIBRARY = "libtcmalloc_minimal.so.4"
SEARCH_DIRS = ("/usr/lib/*-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
#: Set in the restarted process (not a setting: no DEEPSCREEN_ prefix).
RESTARTED = "_DEEPSCREEN_TCMALLOC_RESTART"


def find_tcmalloc(search_dirs: Sequence[str] = SEARCH_DIRS) -> Path | None:
    """The tcmalloc library's path, or None when it is not installed."""
    for pattern in search_dirs:
        for folder in sorted(Path("/").glob(pattern.lstrip("/"))):
            candidate = folder / LIBRARY
            if candidate.is_file():
                return candidate
    return None


def tcmalloc_loaded(maps: Path = Path("/proc/self/maps")) -> bool:
    """Whether this process runs with tcmalloc mapped in."""
    try:
        return "libtcmalloc" in maps.read_text()
    except OSError:
        return False


def allocator_name() -> str:
    """What the training card records as the process's allocator."""
    return "tcmalloc" if tcmalloc_loaded() else "system"


def preload_value(library: Path, current: str) -> str:
    """``LD_PRELOAD`` with ``library`` first and whatever was preloaded kept after it."""
    kept = [p for p in current.replace(":", " ").split() if p and Path(p).name != library.name]
    return " ".join([str(library), *kept])


def restart_on_tcmalloc(choice: str = "tcmalloc") -> None:
    """Re-execute this process with tcmalloc preloaded, unless ``choice`` is
    ``system``, it is loaded already, or it is not installed (then log and go on).

    Call it first thing in a process's entry point (a CLI command, a benchmark's main),
    never from a library function: the process is replaced, arguments and all.
    """
    if choice == "system" or tcmalloc_loaded():
        return
    library = find_tcmalloc()
    if library is None:
        log.info(
            "training on glibc's malloc: %s not found (apt-get install libtcmalloc-minimal4 "
            "trains faster)",
            LIBRARY,
        )
        return
    # The environment is the process's own, passed on to its replacement; a marker
    # stops a second restart if the library turns out not to load.
    if os.environ.get(RESTARTED):
        log.warning("%s is in LD_PRELOAD but did not load; going on with glibc", library)
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = preload_value(library, env.get("LD_PRELOAD", ""))
    env[RESTARTED] = "1"
    log.info("restarting on tcmalloc (%s)", library)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
