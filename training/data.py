"""Dataset readers, deterministic splits and pixel loading.

Four layouts are read: the Kaggle ciplab set (`training_real/`, `training_fake/`),
the Kaggle "140k Real and Fake Faces" set (`real-vs-fake/{train,valid,test}/{real,fake}`),
a generic `<root>/{real,fake}/` tree and a CSV manifest (`path,label[,source][,split]
[,weight]`) whose paths may be store URLs (``s3://bucket/key``, ``file:///path``), as in
the moderator corrections manifest. Pixels are decoded with
`deepscreen.imaging.decode_image`, the serving code's own function, so training sees
exactly what production sees.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from deepscreen.config import Settings
from deepscreen.errors import ImageError, PermanentError
from deepscreen.faces import FaceDetector, FaceStage, face_inputs, open_for_faces
from deepscreen.imaging import Preprocessing, decode_image
from deepscreen.storage import ImageStore, store_for_bucket

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
LABELS = ("real", "fake")  # index = class id; the model outputs P(fake)
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 real, 1 fake
    source: str
    #: "easy"/"mid"/"hard" for ciplab fakes, "" otherwise.
    difficulty: str = ""
    #: The split the layout itself assigns, or None to be assigned by `split_samples`.
    split: str | None = None
    #: ``s3://bucket/key`` when the bytes live in a bucket (``path`` is then only a
    #: name for splits and messages); empty for a local file.
    url: str = ""
    #: Explicit weight, in average base samples of the same class (moderator
    #: corrections); None: weighted by class and source balancing alone.
    weight: float | None = None

    def read_bytes(self, stores: dict[str, ImageStore] | None = None) -> bytes:
        """The encoded image, from its bucket (through ``stores``, by bucket) or its file."""
        if not self.url:
            return self.path.read_bytes()
        bucket, key = split_s3_url(self.url)
        if stores is None or bucket not in stores:
            raise ValueError(f"no store for {self.url}")
        return stores[bucket].get(key)


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); the key is taken as written (not unquoted)."""
    rest = url.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not url.startswith("s3://") or not bucket or not key:
        raise ValueError(f"{url!r} is not an s3://bucket/key URL")
    return bucket, key


def label_id(name: str) -> int:
    try:
        return LABELS.index(name.strip().lower())
    except ValueError:
        raise ValueError(f"unknown label {name!r}; expected one of {LABELS}") from None


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def read_ciplab(root: Path, source: str = "ciplab") -> list[Sample]:
    """Kaggle "Real and Fake Face Detection": training_real/ and training_fake/{easy,mid,hard}_*."""
    root = Path(root)
    if (root / "real_and_fake_face").is_dir():
        root = root / "real_and_fake_face"
    real_dir, fake_dir = root / "training_real", root / "training_fake"
    if not real_dir.is_dir() or not fake_dir.is_dir():
        raise FileNotFoundError(f"{root} has no training_real/ and training_fake/ folders")
    samples = [Sample(p, 0, source) for p in _images(real_dir)]
    for p in _images(fake_dir):
        difficulty = p.name.split("_", 1)[0].lower()
        samples.append(
            Sample(p, 1, source, difficulty if difficulty in ("easy", "mid", "hard") else "")
        )
    return samples


def read_140k(root: Path, source: str = "ffhq-stylegan") -> list[Sample]:
    """Kaggle "140k Real and Fake Faces": real-vs-fake/{train,valid,test}/{real,fake}/."""
    root = Path(root)
    for candidate in (root / "real_vs_fake" / "real-vs-fake", root / "real-vs-fake", root):
        if any((candidate / s).is_dir() for s in SPLITS):
            root = candidate
            break
    else:
        raise FileNotFoundError(f"{root} has no real-vs-fake/{{train,valid,test}} folders")
    samples = []
    for split in SPLITS:
        for name in LABELS:
            folder = root / split / name
            if folder.is_dir():
                samples += [Sample(p, label_id(name), source, "", split) for p in _images(folder)]
    return samples


def read_tree(root: Path, source: str | None = None) -> list[Sample]:
    """A generic tree: <root>/real/** and/or <root>/fake/** (a source may have one label)."""
    root = Path(root)
    if not (root / "real").is_dir() and not (root / "fake").is_dir():
        raise FileNotFoundError(f"{root} has no real/ or fake/ folder")
    source = source or root.name
    return [
        Sample(p, label_id(n), source)
        for n in LABELS
        if (root / n).is_dir()
        for p in _images(root / n)
    ]


def read_manifest(csv_path: Path, source: str | None = None) -> list[Sample]:
    """A CSV manifest with columns path,label and optionally source, split and weight.

    ``path`` is a file path (relative ones are taken from the CSV file's folder), a
    ``file:///`` URL or an ``s3://bucket/key`` URL, whose bytes `load_pixels` reads
    from the bucket. Other columns (a corrections manifest's reviewer, score...) are
    ignored.
    """
    csv_path = Path(csv_path)
    samples = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path} needs the columns path,label")
        for row in reader:
            raw = row["path"].strip()
            url = ""
            if raw.startswith("s3://"):
                split_s3_url(raw)  # refuse a malformed URL here, not at load time
                path, url = Path(raw), raw
            elif raw.startswith("file://"):
                path = Path(unquote(urlsplit(raw).path))
            else:
                path = Path(raw)
                if not path.is_absolute():
                    path = csv_path.parent / path
            split = (row.get("split") or "").strip() or None
            if split is not None and split not in SPLITS:
                raise ValueError(f"{csv_path}: unknown split {split!r}")
            weight = (row.get("weight") or "").strip()
            samples.append(
                Sample(
                    path,
                    label_id(row["label"]),
                    row.get("source") or source or csv_path.stem,
                    "",
                    split,
                    url=url,
                    weight=float(weight) if weight else None,
                )
            )
    return samples


def read_source(spec: str) -> list[Sample]:
    """Read one source. ``spec`` is ``kind:path`` (kind ciplab, 140k, tree, csv) or a
    path whose layout is recognised; a folder holding both Kaggle layouts yields both."""
    kind, _, rest = spec.partition(":")
    readers = {"ciplab": read_ciplab, "140k": read_140k, "tree": read_tree, "csv": read_manifest}
    if kind in readers and rest:
        return readers[kind](Path(rest))
    path = Path(spec)
    if path.suffix.lower() == ".csv":
        return read_manifest(path)
    found: list[Sample] = []
    if (path / "training_real").is_dir() or (path / "real_and_fake_face").is_dir():
        found += read_ciplab(path)
    if (
        any((c / "real-vs-fake").is_dir() for c in (path, path / "real_vs_fake"))
        or path.name == "real-vs-fake"
    ):
        found += read_140k(path)
    if not found and ((path / "real").is_dir() or (path / "fake").is_dir()):
        found = read_tree(path)
    if path.is_dir():
        # A collection such as ../shared/data-more: generic trees side by side, each a source.
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            if sub.name not in ("real", "fake", "real_vs_fake", "real_and_fake_face") and (
                (sub / "real").is_dir() or (sub / "fake").is_dir()
            ):
                found += read_tree(sub)
    if not found:
        raise FileNotFoundError(f"no known dataset layout under {path}")
    return found


def _stable_key(seed: int, sample: Sample) -> str:
    tail = "/".join(sample.path.parts[-3:])
    return hashlib.sha256(f"{seed}:{sample.source}:{tail}".encode()).hexdigest()


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> dict[str, list[Sample]]:
    """Train/valid/test lists. Layout-given splits are kept; the rest is split per
    (source, label, difficulty) stratum by a hash of the file's path, so the split is
    the same on every machine and a file keeps its side when others are added."""
    out: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    strata: dict[tuple[str, int, str], list[Sample]] = {}
    for s in samples:
        if s.split:
            out[s.split].append(s)
        else:
            strata.setdefault((s.source, s.label, s.difficulty), []).append(s)
    for members in strata.values():
        members = sorted(members, key=lambda s: _stable_key(seed, s))
        n_val = round(len(members) * val_fraction)
        if len(members) > 1:
            n_val = max(1, min(n_val, len(members) - 1))
        out["valid"] += members[:n_val]
        out["train"] += members[n_val:]
    return out


def count_table(splits: dict[str, list[Sample]]) -> str:
    """Counts per split, source and label, as printable text."""
    counts = Counter((split, s.source, LABELS[s.label]) for split, ss in splits.items() for s in ss)
    sources = sorted({k[1] for k in counts})
    lines = [f"{'split':<6} {'source':<16} {'real':>6} {'fake':>6}"]
    for split in SPLITS:
        for src in sources:
            r, f = counts[(split, src, "real")], counts[(split, src, "fake")]
            if r or f:
                lines.append(f"{split:<6} {src:<16} {r:>6} {f:>6}")
    return "\n".join(lines)


@dataclass
class LoadedSplit:
    """Decoded pixels for a list of samples; unreadable files are dropped and reported.

    With a face stage, ``pixels`` holds each sample's largest face (what training
    learns from) and ``other_faces`` the crops of its other faces, by sample index,
    for samples with more than one: serving scores every face and the best one wins
    (`best_face_scores`)."""

    samples: list[Sample]
    pixels: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int
    failed: list[tuple[Path, str]]
    other_faces: dict[int, np.ndarray] = field(default_factory=dict)

    def best_face_scores(
        self, scores: np.ndarray, score: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """Each sample's score as serving gives it: the highest of its faces' scores.

        ``scores`` are the scores of ``pixels``; ``score`` scores a batch of crops.
        """
        out = np.array(scores, dtype=np.float64).reshape(-1)
        if self.other_faces:
            order = sorted(self.other_faces)
            others = np.asarray(score(np.concatenate([self.other_faces[i] for i in order])))
            start = 0
            for i in order:
                n = len(self.other_faces[i])
                out[i] = max(out[i], float(np.max(others[start : start + n])))
                start += n
        return out


def default_crop_cache() -> Path:
    """Where face crops are cached between runs (``$XDG_CACHE_HOME/deepscreen/crops``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deepscreen" / "crops"


class _CropCache:
    """Face crops on disk, keyed by the face stage, the crop size and the file's identity
    (path, size, mtime), so a later run with the same contract detects nothing again."""

    def __init__(self, root: Path, stage: FaceStage, prep: Preprocessing) -> None:
        # "-faces": every face's crop, largest first (an earlier format kept the largest only).
        name = f"{stage.digest()}-{prep.height}x{prep.width}-{prep.resample}-faces"
        self.folder = Path(root) / name
        self.folder.mkdir(parents=True, exist_ok=True)

    def _file(self, sample: Sample) -> Path | None:
        if sample.url:
            return None  # bucket objects are not cached: they have no stable local identity
        try:
            st = sample.path.stat()
        except OSError:
            return None
        key = f"{sample.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"

    def get(self, sample: Sample) -> np.ndarray | None:
        f = self._file(sample)
        if f is None or not f.is_file():
            return None
        try:
            return np.load(f, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a torn write: detect again

    def put(self, sample: Sample, crop: np.ndarray) -> None:
        f = self._file(sample)
        if f is None:
            return
        tmp = f.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        with tmp.open("wb") as fh:
            np.save(fh, crop, allow_pickle=False)
        tmp.replace(f)


#: The reason a sample without a face is left out of training and evaluation.
NO_FACE_REASON = "no face found"


def load_pixels(
    samples: list[Sample],
    prep: Preprocessing,
    workers: int = 4,
    *,
    settings: Settings | None = None,
    face_stage: FaceStage | None = None,
    cache_dir: Path | None = None,
) -> LoadedSplit:
    """Decode every sample with the serving decoder (threads; Pillow releases the GIL).

    With ``face_stage``, each sample becomes the crop of its largest face, cut by the
    serving code's own face stage, and its other faces' crops are kept aside
    (`LoadedSplit.other_faces`); a sample with no face is left out and reported
    (reason `NO_FACE_REASON`). Crops are cached under ``cache_dir`` (default
    `default_crop_cache`). Samples in a bucket are read through `deepscreen.storage`
    with ``settings``' S3 endpoint and credentials (default: `Settings.from_env`). A
    file or object that is gone or undecodable is skipped and reported; an
    unreachable store raises.
    """
    stores: dict[str, ImageStore] = {}
    buckets = sorted({split_s3_url(s.url)[0] for s in samples if s.url})
    if buckets:
        settings = settings or Settings.from_env()
        stores = {bucket: store_for_bucket(bucket, settings) for bucket in buckets}
    cache = _CropCache(cache_dir or default_crop_cache(), face_stage, prep) if face_stage else None
    local = threading.local()

    def face_crop(sample: Sample) -> np.ndarray | str:
        assert face_stage is not None and cache is not None
        cached = cache.get(sample)
        if cached is None:
            if not hasattr(local, "detector"):
                local.detector = FaceDetector(face_stage, num_threads=1)
            opened = open_for_faces(sample.read_bytes(stores), face_stage, prep)
            # Every face serving would score, largest first; (0, H, W, 3) when none.
            cached, _ = face_inputs(opened.image, local.detector, prep.height)
            cache.put(sample, cached)
        return cached if len(cached) else NO_FACE_REASON

    def one(sample: Sample) -> np.ndarray | str:
        """(k, H, W, 3) inputs, largest face first, or why there are none."""
        try:
            if face_stage is not None:
                return face_crop(sample)
            return decode_image(sample.read_bytes(stores), prep).pixels[np.newaxis]
        # A bad or vanished file must not stop a training run; transient store errors do.
        except (OSError, ImageError, PermanentError) as exc:
            return f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, samples))
    kept, arrays, failed, others = [], [], [], {}
    for sample, res in zip(samples, results):
        if isinstance(res, str):
            failed.append((sample.path, res))
            log.warning("skipping %s: %s", sample.path, res)
        else:
            if len(res) > 1:
                others[len(kept)] = res[1:]
            kept.append(sample)
            arrays.append(res[0])
    pixels = np.stack(arrays) if arrays else np.zeros((0, prep.height, prep.width, 3), np.uint8)
    labels = np.array([s.label for s in kept], dtype=np.int64)
    return LoadedSplit(kept, pixels, labels, failed, others)
