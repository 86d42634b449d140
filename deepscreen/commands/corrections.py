"""`deepscreen corrections export OUT.csv`: the moderators' corrections as a training
manifest (``deepscreen train --data csv:OUT.csv`` reads it, images from the bucket)."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepscreen.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("corrections", help="moderator corrections (flags and overrides)")
    actions = p.add_subparsers(dest="corrections_action", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export",
        help="write the corrections as a CSV manifest (path,label,source,reviewer,...)",
        description="One row per image whose latest human decision corrects the model: "
        "path is the object's s3:// or file:// URL, label the corrected label.",
    )
    export.add_argument("out", type=Path, metavar="OUT.csv")
    export.add_argument(
        "--after-review-id",
        type=int,
        default=None,
        metavar="ID",
        help="only corrections decided after review ID (e.g. a run's last_review_id)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deepscreen.corrections import corrections, write_manifest
    from deepscreen.db.session import make_engine, make_session_factory, session_scope

    settings = Settings.from_env()
    engine = make_engine(settings)
    try:
        with session_scope(make_session_factory(engine)) as session:
            found = corrections(session=session, after_review_id=args.after_review_id)
    finally:
        engine.dispose()
    write_manifest(found, args.out)
    print(f"{len(found)} corrections written to {args.out}")
    return 0
