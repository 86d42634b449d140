"""`deepscreen classify`, run in-process through the real console-script entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_variants import model_variant
from PIL import Image

from deepscreen.cli import main
from deepscreen.faces import FaceStage
from deepscreen.inference import NO_FACE


@pytest.fixture
def folder(tmp_path: Path, encode, smooth) -> Path:
    """Two images, one corrupt JPEG, a text file, and one image in a subfolder."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "b.png").write_bytes(encode(smooth(120, 90, seed=1), "PNG"))
    (root / "a.jpg").write_bytes(encode(smooth(90, 120, seed=2), "JPEG"))
    (root / "broken.jpg").write_bytes(encode(smooth(64, 64, seed=3), "JPEG")[:200])
    (root / "notes.txt").write_text("not an image, and not picked up by extension")
    (root / "sub" / "c.WEBP").write_bytes(encode(smooth(70, 70, seed=4), "WEBP"))
    return root


def table_rows(out: str) -> dict[str, list[str]]:
    """Table lines keyed by their first column (the file)."""
    lines = out.strip().splitlines()
    return {line.split()[0]: line.split() for line in lines[1:-1]}


def test_table_for_files(capsys, folder, classifier, model_dir):
    # Given two image files named explicitly (and a whole-image model: they have no face)
    a, b = folder / "a.jpg", folder / "b.png"

    # When they are classified
    status = main(["classify", str(a), str(b), "--threads", "1", "--model", str(model_dir)])

    # Then a header, one row each with score and label, and a summary
    out = capsys.readouterr().out
    assert status == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["file", "score", "label"]
    rows = table_rows(out)
    assert list(rows) == [str(a), str(b)]
    for cells in rows.values():
        score = float(cells[1])
        assert 0.0 <= score <= 1.0
        assert cells[2] in classifier.labels
    assert lines[-1].startswith("2 images:")
    assert "0 failed" in lines[-1]
    # The columns are aligned: every score ends at the same offset
    ends = [line.index(cells[1]) + len(cells[1]) for line, cells in zip(lines[1:-1], rows.values())]
    assert len(set(ends)) == 1


def test_folder_with_a_corrupt_file_lists_the_reason_and_exits_0(capsys, folder, model_dir):
    status = main(["classify", str(folder), "--threads", "1", "--model", str(model_dir)])

    out = capsys.readouterr().out
    assert status == 0
    rows = table_rows(out)
    # Sorted, recursive, filtered by extension (case-insensitive), text file skipped
    assert list(rows) == [
        str(folder / "a.jpg"),
        str(folder / "b.png"),
        str(folder / "broken.jpg"),
        str(folder / "sub" / "c.WEBP"),
    ]
    assert out.splitlines()[0].split() == ["file", "score", "label", "reason"]
    assert rows[str(folder / "broken.jpg")][1:3] == ["-", "-"]
    assert "undecodable" in rows[str(folder / "broken.jpg")][3]
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("4 images:")
    assert summary.endswith("1 failed")


def test_no_recursive_stays_in_the_folder(capsys, folder):
    status = main(["classify", str(folder), "--no-recursive", "--json"])

    paths = [item["path"] for item in json.loads(capsys.readouterr().out)]
    assert status == 0
    assert str(folder / "sub" / "c.WEBP") not in paths
    assert len(paths) == 3


def test_json_output(capsys, folder, classifier, model_dir):
    status = main(
        ["classify", str(folder), "--json", "--batch", "2", "--threads", "1",
         "--model", str(model_dir)]
    )

    captured = capsys.readouterr()
    assert status == 0
    results = json.loads(captured.out)  # one document, nothing else on stdout
    assert [Path(item["path"]).name for item in results] == [
        "a.jpg",
        "b.png",
        "broken.jpg",
        "c.WEBP",
    ]
    for item in results:
        assert set(item) == {"path", "score", "label", "model_version", "error", "faces", "reason"}
        if item["path"].endswith("broken.jpg"):
            assert item["score"] is None and item["label"] is None
            assert item["error"].startswith("undecodable")
        else:
            assert item["error"] is None
            assert 0.0 <= item["score"] <= 1.0
            assert item["label"] == classifier.label_for(item["score"])
            assert item["model_version"] == classifier.version


def test_explicit_file_is_tried_whatever_its_extension(capsys, tmp_path, encode):
    odd = tmp_path / "photo.data"
    odd.write_bytes(encode(Image.new("RGB", (50, 50), (9, 9, 9)), "PNG"))

    status = main(["classify", str(odd), "--json"])

    [item] = json.loads(capsys.readouterr().out)
    assert status == 0
    assert item["error"] is None


def test_empty_file_in_a_folder_is_reported(capsys, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")

    status = main(["classify", str(tmp_path), "--json"])

    [item] = json.loads(capsys.readouterr().out)
    assert status == 0
    assert item["error"].startswith("undecodable")


def test_empty_folder(capsys, tmp_path):
    status = main(["classify", str(tmp_path)])

    assert status == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("0 images")


def test_missing_path_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", str(tmp_path / "nope.jpg")])

    assert exit_info.value.code == 2
    assert "nope.jpg" in capsys.readouterr().err


def test_bad_model_dir_is_a_usage_error(capsys, folder, tmp_path):
    status = main(["classify", str(folder), "--model", str(tmp_path / "no-model")])

    assert status == 2
    assert "model" in capsys.readouterr().err


@pytest.fixture
def face_model(tmp_path: Path) -> Path:
    """The packaged network behind a face stage."""
    return model_variant(tmp_path / "face-model", pad=80, face_stage=FaceStage())


def test_a_face_model_shows_no_face_and_the_number_of_faces(capsys, folder, face_model):
    # Given generated images (no face in any) and a model with a face stage
    # When the folder is classified
    status = main(["classify", str(folder), "--model", str(face_model), "--threads", "1"])

    # Then each decoded image is no_face with 0 faces and its reason; the corrupt one failed
    out = capsys.readouterr().out
    assert status == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["file", "score", "label", "faces", "reason"]
    rows = table_rows(out)
    assert len(rows) == 4
    for path, cells in rows.items():
        if path.endswith("broken.jpg"):
            assert cells[1:4] == ["-", "-", "-"] and cells[4].startswith("undecodable")
        else:
            assert cells[1:4] == ["-", NO_FACE, "0"]
            assert " ".join(cells[4:]).startswith("no face of at least")
    assert lines[-1].endswith("3 no_face, 1 failed")


def test_a_face_model_json_has_the_faces_and_the_reason(capsys, tmp_path, face_model, encode):
    # Given a flat grey image
    (tmp_path / "flat.png").write_bytes(encode(Image.new("RGB", (80, 80), (120, 120, 120)), "PNG"))

    status = main(["classify", str(tmp_path), "--model", str(face_model), "--json"])

    # Then its result is no_face: no score, an empty face list and the reason
    [item] = json.loads(capsys.readouterr().out)
    assert status == 0
    assert (item["label"], item["score"], item["faces"], item["error"]) == (NO_FACE, None, [], None)
    assert item["reason"].startswith("no face of at least")
