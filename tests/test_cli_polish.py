"""Small things a first-time user met on the command line: every command's --help
describes it in plain text, ``classify`` lists a file named twice once, and ``run``
takes ``--serve`` before or after its folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from sample_images import generated_images

from deepscreen.cli import build_parser, main
from worker.cli import chosen_folder


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, by name."""
    return build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr,no-any-return]


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_command_has_a_plain_text_description(command: str) -> None:
    sub = commands()[command]
    assert sub.description, f"deepscreen {command} --help has no description"
    assert "``" not in sub.format_help(), f"deepscreen {command} --help shows reST markup"


def test_classify_lists_a_file_named_twice_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [(name, data)] = generated_images(1).items()
    photo = tmp_path / name
    photo.write_bytes(data)
    # When the same file is named twice (and once more through its folder)
    assert main(["classify", str(photo), str(tmp_path / "." / name), str(tmp_path)]) == 0
    # Then it is classified and listed once
    table = capsys.readouterr().out
    assert table.count(name) == 1, table
    assert "1 image" in table


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "photos", "--serve"],
        ["run", "--serve", "photos"],
        ["run", "photos", "--serve", "9000"],
        ["run", "--serve", "9000", "photos"],
    ],
)
def test_run_takes_serve_before_or_after_the_folder(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert chosen_folder(args) == Path("photos")
    assert args.serve == (9000 if "9000" in argv else 8000)
