"""The one `deepscreen` console script.

Subcommands are plugged in through the ``deepscreen.commands`` entry-point group:
each entry point is a ``register(subparsers)`` function that adds its parser and
sets ``func`` on it. Apps register their own commands this way, so the kernel never
imports an app, and heavy imports (TensorFlow, LiteRT) happen only inside the
command that needs them.

Every command is listed whatever is installed. An app's commands need the extra of
the same name (``training``, ``dashboard``, ``worker``); when its modules cannot be
imported, the command is still listed, says which extra to install, and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from importlib.metadata import entry_points
from typing import Any

from deepscreen import __version__

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "deepscreen.commands"

#: App package -> the modules its extra (same name) installs: a command registered from
#: that package runs only if they can be imported.
EXTRA_MODULES = {
    "training": ("tensorflow", "keras", "sklearn", "matplotlib"),
    "dashboard": ("flask", "gunicorn"),
    "worker": ("prometheus_client",),
}
#: Exit status of a command whose extra is missing (as for any usage error).
MISSING_EXTRA = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepscreen",
        description="Tell real face photos from AI-generated or manipulated ones.",
    )
    parser.add_argument("--version", action="version", version=f"deepscreen {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, action=_Commands
    )
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        extra = ep.module.split(".")[0]
        if extra in EXTRA_MODULES and not installed(EXTRA_MODULES[extra]):
            _needs_extra(subparsers, ep.name, extra)
            continue
        try:
            register = ep.load()
        except (ImportError, AttributeError) as exc:
            # A slim install (a worker image, say) may lack an app; its commands stay
            # listed and say what is missing, the others still work.
            log.debug("command %r unavailable: %s", ep.name, exc)
            _needs_extra(subparsers, ep.name, extra if extra in EXTRA_MODULES else None, exc)
            continue
        register(subparsers)
    return parser


class _Commands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands whose ``--help`` falls back to their one-line help as a description."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        summary = kwargs.get("help")
        if summary and not kwargs.get("description"):
            kwargs["description"] = summary[0].upper() + summary[1:] + "."
        return super().add_parser(name, **kwargs)


def installed(modules: tuple[str, ...]) -> bool:
    """Whether every one of ``modules`` can be imported (found, not imported)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in modules)
    except (ImportError, ValueError):
        return False


def install_hint(extra: str) -> str:
    return f"pip install 'deepscreen[{extra}]' (from a clone: pip install -e '.[{extra}]')"


def _needs_extra(
    subparsers: argparse._SubParsersAction,
    name: str,
    extra: str | None,
    error: Exception | None = None,
) -> None:
    """A stand-in for command ``name``: listed, with help, and failing with the fix."""
    why = f"needs the {extra} extra: {install_hint(extra)}" if extra else f"unavailable: {error}"
    p = subparsers.add_parser(name, help=f"({why})", description=f"deepscreen {name} {why}.")

    def refuse(_: argparse.Namespace) -> int:
        print(f"deepscreen {name}: {why}", file=sys.stderr)
        return MISSING_EXTRA

    # Its real options are unknown here: any are taken, and the answer is the fix.
    p.set_defaults(func=refuse, takes_any_arguments=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Commands that may restart their process (training's allocator) do so only when
    # they run as the process's own command line, not when called in-process.
    args.command_line = argv is None
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
