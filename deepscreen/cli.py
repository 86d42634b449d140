"""The one `deepscreen` console script.

Subcommands are plugged in through the ``deepscreen.commands`` entry-point group:
each entry point is a ``register(subparsers)`` function that adds its parser and
sets ``func`` on it. Apps register their own commands this way, so the kernel never
imports an app, and heavy imports (TensorFlow, LiteRT) happen only inside the
command that needs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from deepscreen import __version__

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "deepscreen.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepscreen",
        description="Tell real face photos from AI-generated or manipulated ones.",
    )
    parser.add_argument("--version", action="version", version=f"deepscreen {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except (ImportError, AttributeError) as exc:
            # A slim install (a worker image, say) may lack an app; its commands go missing,
            # the others still work.
            log.debug("command %r unavailable: %s", ep.name, exc)
            continue
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
