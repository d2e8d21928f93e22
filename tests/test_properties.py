"""Property tests (hypothesis): geometry survives write -> read; dataset.json variants never crash.

Tolerances of the round trip, per format:

* NRRD and MetaImage store spacing, origin and direction as decimal text with about 17 significant digits:
  the affine comes back within 1e-9.
* NIfTI-1 stores ``pixdim``, the quaternion and the offsets as float32 (24-bit mantissa). A float32 near
  500 mm is exact to about 3e-5 mm, and the rotation rebuilt from a float32 quaternion is exact to about
  1e-7, times the spacing (<= 5 mm): the affine comes back within 1e-4 (mm for the origin, mm per voxel for
  the linear part), the guide's 1e-6 being out of reach for origins of hundreds of millimetres.

Voxel values always come back exactly (float32 images, integer labels).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.segmentation.datasets import load_dataset

ROUND_TRIP_ATOL = {".nii.gz": 1e-4, ".nrrd": 1e-9, ".mha": 1e-9}
PROPERTY_SETTINGS = settings(
    max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)  # no example database: nothing written into the checkout


# -- (a) geometry round trip -----------------------------------------------------------------------


def _rotation(ndim: int, values: list[float]) -> np.ndarray:
    """A proper rotation: an angle in 2D, a normalised quaternion in 3D."""
    if ndim == 2:
        angle = values[0] * np.pi
        return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    w, x, y, z = np.array(values) / np.linalg.norm(values)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


@st.composite
def images(draw) -> Image:
    """A small 2D or 3D float image or label map with random spacing, origin and rotation."""
    ndim = draw(st.sampled_from([2, 3]))
    shape = draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim))
    spacing = draw(st.lists(st.floats(0.1, 5.0), min_size=ndim, max_size=ndim))
    origin = draw(st.lists(st.floats(-500.0, 500.0), min_size=ndim, max_size=ndim))
    quaternion = draw(st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.1))
    is_label = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    affine = Affine.from_geometry(spacing, origin, _rotation(ndim, quaternion))
    if is_label:
        return Image(torch.from_numpy(rng.integers(0, 6, (1, *shape))), affine, is_label=True)
    return Image(torch.from_numpy(rng.normal(0, 100, (1, *shape)).astype(np.float32)), affine)


@pytest.mark.parametrize("suffix", list(ROUND_TRIP_ATOL))
@PROPERTY_SETTINGS
@given(image=images())
def test_geometry_and_values_survive_write_then_read(suffix: str, image: Image):
    with tempfile.TemporaryDirectory() as folder:
        path = write_image(image, Path(folder) / f"image{suffix}")
        back = read_image(path, is_label=image.is_label)
    assert back.ndim == image.ndim and back.spatial_shape == image.spatial_shape
    assert np.allclose(back.affine.matrix, image.affine.matrix, rtol=0, atol=ROUND_TRIP_ATOL[suffix]), (
        back.affine,
        image.affine,
    )
    assert back.data.dtype == image.data.dtype and torch.equal(back.data, image.data)


# -- (b) dataset.json variants ---------------------------------------------------------------------

CASES = ("case_000", "case_001", "case_002")
MISSING = object()  # a key left out


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    """Three tiny labelled cases in imagesTr/labelsTr; each example writes its own dataset.json."""
    root = tmp_path_factory.mktemp("variants")
    affine = Affine.from_geometry((1.0, 1.5, 2.0))
    for index, case in enumerate(CASES):
        labels = torch.zeros((1, 4, 4, 3), dtype=torch.int64)
        labels[0, 1:3, 1:3, 1] = 1 + index % 2
        write_image(Image(torch.rand(1, 4, 4, 3), affine), root / "imagesTr" / f"{case}.nii.gz")
        write_image(Image(labels, affine, is_label=True), root / "labelsTr" / f"{case}.nii.gz")
    return root


junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=4),
    st.lists(st.integers(0, 2), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)  # fmt: skip


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` three times in four, else ``bad``: enough valid documents that acceptance gets exercised."""
    return st.integers(0, 3).flatmap(lambda pick: bad if pick == 3 else good)


modalities = mostly(st.sampled_from([{"0": "MRI"}, {"0": "CT"}, {"0": "T2"}, {"x": "MRI"}, {"0": "T1", "1": "T2"}]),
                    st.one_of(st.just({}), junk))  # fmt: skip
labels = mostly(
    st.sampled_from([{"0": "background", "1": "outer", "2": "core"}, {"background": 0, "outer": 1, "core": 2},
                     {"1": "outer", "2": "core"}, {"0": "background", "1": "a", "2": "b", "3": "c"}]),
    st.one_of(junk, st.dictionaries(st.sampled_from(["0", "1", "-1", "a", "background"]),
                                    st.one_of(st.sampled_from(["bg", "x"]), st.integers(-2, 3), st.booleans(),
                                              st.floats(0, 3)), max_size=3)),
)  # fmt: skip


@st.composite
def training_entry(draw, root: Path, case: str) -> object:
    """One training entry with a relative (``./`` or bare) or absolute path, now and then broken."""
    base = draw(st.sampled_from(["./", "", f"{root}/"]))
    entry: dict = {"image": f"{base}imagesTr/{case}.nii.gz", "label": f"{base}labelsTr/{case}.nii.gz"}
    mutation = draw(mostly(st.just("none"), st.sampled_from(["no_label", "no_image", "junk_image", "junk_label"])))
    if mutation == "no_label":
        entry.pop("label")
    elif mutation == "no_image":
        entry.pop("image")
    elif mutation.startswith("junk_"):
        entry[mutation[5:]] = draw(junk)
    return draw(mostly(st.just(entry), junk))


@st.composite
def training_lists(draw, root: Path) -> object:
    """A training list over existing cases (and now and then a missing one or a duplicate), or junk."""
    cases = draw(st.lists(mostly(st.sampled_from(CASES), st.just("case_999")), min_size=1, max_size=3))
    if len(set(cases)) < len(cases) and draw(st.booleans()):
        cases = sorted(set(cases))
    entries = [draw(training_entry(root, case)) for case in cases]
    return draw(mostly(st.just(entries), st.one_of(st.just([]), junk)))


@st.composite
def dataset_documents(draw, root: Path) -> object:
    """A dataset.json document: keys present or missing, wrong types, extra keys, numTraining mismatches."""
    present = lambda value: mostly(value, st.just(MISSING))  # noqa: E731
    values = {
        "name": draw(present(st.one_of(st.just("spheres"), junk))),
        draw(st.sampled_from(["modality", "channel_names"])): draw(present(modalities)),
        "labels": draw(present(labels)),
        "numTraining": draw(present(st.one_of(st.integers(0, 5), junk))),
        "training": draw(present(training_lists(root))),
        draw(st.sampled_from(["extra", "tensorImageSize", "licence"])): draw(junk),
    }
    document = {key: value for key, value in values.items() if value is not MISSING}
    return draw(st.one_of(st.just(document), junk)) if draw(st.integers(0, 19)) == 0 else document


@PROPERTY_SETTINGS
@given(data=st.data())
def test_dataset_json_variants_are_accepted_or_refused_in_one_line(dataset_root: Path, data):
    document = data.draw(dataset_documents(dataset_root))
    (dataset_root / "dataset.json").write_text(json.dumps(document))
    try:
        spec = load_dataset(dataset_root)
    except SegmorphError as err:
        message = str(err)
        assert "\n" not in message and "dataset.json" in message, message
        return
    assert spec.cases and 0 in spec.labels
    for case in spec.cases:
        assert all(path.is_file() for path in case.images), case
        assert case.label is None or case.label.is_file(), case
