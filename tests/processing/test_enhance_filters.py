"""The processing filters on tiny synthetic images with known answers, and geometry kept by every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import segmorph as sm
from helpers import OBLIQUE, sphere_case
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.processing import filters
from segmorph.processing.steps import STEP_NAMES, enhance, parse_steps

_A = np.deg2rad(25)
OBLIQUE_2D = Affine.from_geometry((0.8, 1.1), (-12.5, 30.25), [[np.cos(_A), -np.sin(_A)], [np.sin(_A), np.cos(_A)]])


def _image(array: np.ndarray, affine: Affine) -> Image:
    return Image(torch.from_numpy(np.asarray(array, dtype=np.float32)[None]), affine)


def _grid(shape, affine: Affine) -> tuple[np.ndarray, np.ndarray]:
    """Index grid ``(*S, D)`` and distance in mm of each voxel from the grid centre."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    return grid, np.linalg.norm((grid - (np.array(shape) - 1) / 2) * affine.spacing, axis=-1)


def test_n4_removes_a_known_smooth_multiplicative_bias_to_within_two_percent():
    shape = (32, 32, 16)
    grid, distance = _grid(shape, OBLIQUE)
    truth = np.where(distance < 11, 100.0, 0.0) + np.where(distance < 5, 50.0, 0.0) + 1
    bias = np.exp(0.25 * ((grid[..., 0] - 15.5) / 16 + (grid[..., 1] - 15.5) / 16))  # about +-28 %
    inside = distance < 11

    def variation(array: np.ndarray) -> float:  # N4 leaves a global scale free: the spread of the ratio counts
        ratio = array[inside] / truth[inside]
        return float(ratio.std() / ratio.mean())

    biased = _image(truth * bias, OBLIQUE)
    corrected = enhance(biased, "n4:shrink=2")
    assert variation(biased.numpy()[0]) > 0.1
    assert variation(corrected.numpy()[0]) < 0.02  # the residual bias left by N4: under 2 %
    assert corrected.affine is biased.affine and corrected.data.dtype == torch.float32


def test_n4_on_a_single_slice_volume_fits_the_field_in_the_slice_plane():
    shape = (32, 1, 24)
    grid, distance = _grid(shape, OBLIQUE)
    truth = np.where(distance < 9, 100.0, 10.0)
    bias = np.exp(0.25 * (grid[..., 0] - 15.5) / 16)
    volume = _image(truth * bias, OBLIQUE)
    spacing = OBLIQUE.spacing
    plane = _image((truth * bias)[:, 0, :], Affine.from_geometry((spacing[0], spacing[2])))
    corrected, corrected_plane = enhance(volume, "n4:shrink=2"), enhance(plane, "n4:shrink=2")
    assert corrected.spatial_shape == shape and corrected.affine is volume.affine
    np.testing.assert_allclose(corrected.numpy()[0, :, 0, :], corrected_plane.numpy()[0], rtol=1e-5)
    with pytest.raises(SegmorphError, match=r"n4 needs at least two axes longer than one voxel.*\(1, 1, 32\)"):
        filters.n4(_image(np.ones((1, 1, 32)), OBLIQUE))


def test_median_removes_salt_and_pepper_noise():
    rng = np.random.default_rng(0)
    clean = np.full((32, 32), 100.0)
    clean[8:24, 10:22] = 200.0
    noisy = clean.copy()
    hits = rng.random(clean.shape) < 0.1
    noisy[hits] = rng.choice([0.0, 1000.0], hits.sum())
    out = enhance(_image(noisy, OBLIQUE_2D), "denoise:median").numpy()[0]
    wrong_before = np.mean(np.abs(noisy - clean) > 1)
    wrong_after = np.mean(np.abs(out - clean) > 1)
    assert wrong_before > 0.08 and wrong_after < 0.01


@pytest.mark.parametrize("method", filters.DENOISERS)
def test_every_denoiser_lowers_gaussian_noise(method):
    rng = np.random.default_rng(1)
    clean = np.full((24, 24, 12), 100.0)
    noisy = clean + rng.normal(0, 10, clean.shape)
    out = enhance(_image(noisy, OBLIQUE), f"denoise:{method}").numpy()[0]
    assert np.abs(out - clean)[2:-2, 2:-2, 2:-2].mean() < 0.8 * np.abs(noisy - clean)[2:-2, 2:-2, 2:-2].mean()


def test_clahe_raises_local_contrast_on_a_known_pattern():
    # two halves 100 apart, each with a faint texture of amplitude +-4: global rescaling leaves it faint
    i, j = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    pattern = 2.0 * (np.sin(i / 1.5) + np.sin(j / 2.0)) + np.where(j >= 32, 100.0, 0.0)
    image = _image(pattern, OBLIQUE_2D)
    before = enhance(image, "rescale").numpy()[0][8:24, 8:24].std()
    after = enhance(image, "clahe").numpy()[0][8:24, 8:24].std()
    assert after > 3 * before
    assert enhance(image, "clahe:0.05").numpy()[0][8:24, 8:24].std() > 2 * after  # a higher clip limit: more
    equalised = enhance(image, "histeq").numpy()[0]
    assert equalised.min() >= 0 and equalised.max() <= 1 and equalised[8:24, 8:24].std() > 3 * before


def test_clahe_and_histeq_on_rgb_keep_three_channels():
    rng = np.random.default_rng(2)
    rgb = Image(torch.from_numpy(rng.uniform(0, 255, (3, 24, 24)).astype(np.float32)), OBLIQUE_2D)
    for step in ("clahe", "histeq"):
        out = enhance(rgb, step)
        assert out.num_channels == 3 and float(out.data.min()) >= 0 and float(out.data.max()) <= 1


def test_canny_finds_the_border_of_a_disc_within_one_pixel():
    shape = (40, 32)
    _, distance = _grid(shape, OBLIQUE_2D)
    radius = 10.0  # mm
    disc = np.where(distance < radius, 100.0, 0.0)
    edges = enhance(_image(disc, OBLIQUE_2D), "canny").numpy()[0] > 0.5
    assert edges.sum() > 20
    pixel = float(max(OBLIQUE_2D.spacing))
    assert np.abs(distance[edges] - radius).max() <= pixel  # every edge within one pixel of the border
    inside = distance < radius
    border = inside & ~(np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1))
    near = np.zeros_like(edges)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            near |= np.roll(np.roll(edges, di, 0), dj, 1)
    assert near[border].mean() > 0.95  # and the border is found all round


def test_canny_finds_the_surface_of_a_ball_within_one_voxel_in_3d():
    _, distance = _grid((32, 28, 14), OBLIQUE)
    edges = enhance(_image(np.where(distance < 10.0, 100.0, 0.0), OBLIQUE), "canny").numpy()[0] > 0.5
    assert edges.sum() > 200 and np.abs(distance[edges] - 10.0).max() <= max(OBLIQUE.spacing)


def _tubes_2d() -> tuple[Image, dict[int, int]]:
    rows = {1: 8, 2: 24, 4: 46}  # radius (voxels) -> centre row
    i = np.arange(64)[:, None] * np.ones((64, 32))
    array = sum((np.abs(i - row) <= r).astype(float) for r, row in rows.items())
    return _image(array, OBLIQUE_2D), rows


@pytest.mark.parametrize("method", ["frangi", "sato"])
@pytest.mark.parametrize("radius", [1, 2, 4])
def test_vesselness_peaks_on_the_tube_of_the_tuned_radius(method, radius):
    image, rows = _tubes_2d()
    response = enhance(image, f"{method}:{radius + 0.5}").numpy()[0][:, 16]  # scale: the tube's half-width
    assert abs(int(np.argmax(response)) - rows[radius]) <= 1


@pytest.mark.parametrize("step", ["frangi:2.5", "sato:2.5", "frangi:dark,2.5"])
def test_vesselness_in_3d_peaks_on_the_tube_axis(step):
    grid, _ = _grid((24, 24, 12), OBLIQUE)
    tube = (np.abs(grid[..., 0] - 11) <= 2) & (np.abs(grid[..., 1] - 12) <= 2)  # along K
    array = np.where(tube, 0.0, 1.0) if "dark" in step else tube.astype(float)
    response = enhance(_image(array, OBLIQUE), step).numpy()[0][..., 6]
    peak = np.unravel_index(np.argmax(response), response.shape)
    assert abs(peak[0] - 11) <= 1 and abs(peak[1] - 12) <= 1


def test_a_window_maps_hounsfield_units_onto_0_1_exactly():
    hu = np.array([[-1000.0, 0.0, 20.0, 40.0, 60.0, 80.0, 3000.0]])
    brain = enhance(_image(hu, OBLIQUE_2D), "window:brain").numpy()[0]
    assert brain.tolist() == [[0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]]
    assert enhance(_image(hu, OBLIQUE_2D), "window:40,80").numpy()[0].tolist() == brain.tolist()
    lung = enhance(_image(np.array([[-1350.0, -600.0, 150.0]]), OBLIQUE_2D), "window:lung").numpy()[0]
    assert lung.tolist() == [[0.0, 0.5, 1.0]]


def test_clip_to_percentiles_and_values():
    values = np.arange(101, dtype=float)[None]
    assert enhance(_image(values, OBLIQUE_2D), "clip:p10,p90").numpy()[0].min() == 10
    out = enhance(_image(values, OBLIQUE_2D), "clip:20,30").numpy()[0]
    assert out.min() == 20 and out.max() == 30


def test_channel_and_invert():
    rgb = Image(torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(3, 4, 5), OBLIQUE_2D)
    green = enhance(rgb, "channel:green")
    assert green.num_channels == 1 and torch.equal(green.data[0], rgb.data[1])
    inverted = enhance(green, "invert").data[0]
    assert float(inverted.max()) == float(green.data.max()) and float(inverted[0, 0]) == float(green.data.max())


def test_morphology_on_label_maps():
    labels = np.zeros((20, 20, 10), dtype=np.int64)
    labels[4:14, 4:14, 2:8] = 1
    labels[8, 8, 5] = 0  # a hole
    labels[17, 17, 5] = 1  # a speck, its own component
    mask = Image(torch.from_numpy(labels[None]), OBLIQUE, is_label=True)
    filled = enhance(mask, "fill-holes").numpy()[0]
    assert filled[8, 8, 5] == 1
    largest = enhance(mask, "largest-component").numpy()[0]
    assert largest[17, 17, 5] == 0 and largest[5, 5, 5] == 1
    opened = enhance(mask, "open:1")
    assert opened.is_label and opened.data.dtype == torch.int64 and opened.numpy()[0, 17, 17, 5] == 0
    assert enhance(mask, "dilate:1").numpy().sum() > labels.sum() > enhance(mask, "erode:1").numpy().sum()
    assert enhance(mask, "close:1").numpy()[0, 8, 8, 5] == 1


EXAMPLES = ["n4:shrink=2", "denoise:gaussian", "denoise:median", "denoise:bilateral", "denoise:anisotropic",
            "denoise:nlmeans", "histeq", "clahe", "window:brain", "window:40,400", "clip:p0.5,p99.5", "rescale",
            "canny", "gradient", "frangi", "sato:dark,1,2", "channel:0", "invert", "open:1", "close:1", "erode:1",
            "dilate:1", "fill-holes"]  # fmt: skip


def test_the_examples_cover_every_step():
    assert {s.partition(":")[0] for s in EXAMPLES} | {"largest-component"} == set(STEP_NAMES)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("step", EXAMPLES)
def test_every_step_keeps_an_oblique_anisotropic_geometry(step, ndim):
    image, labels = sphere_case((20, 16, 10))
    if ndim == 2:
        image = Image(image.data[..., 5].abs() + 1, OBLIQUE_2D)
        labels = Image(labels.data[..., 5], OBLIQUE_2D, is_label=True)
    else:
        image = image.with_data(image.data.abs() + 1)
    before = image.data.clone()
    out = enhance(image, step)
    assert out.affine is image.affine and out.spatial_shape == image.spatial_shape and not out.is_label
    assert torch.isfinite(out.data).all() and torch.equal(image.data, before)  # the input is untouched
    if step.partition(":")[0] in ("open", "close", "erode", "dilate", "fill-holes"):
        on_labels = enhance(labels, step)
        assert on_labels.is_label and on_labels.affine is labels.affine and on_labels.data.dtype == torch.int64


@pytest.mark.parametrize("shape", [(1, 1, 1), (12, 10, 1)])
@pytest.mark.parametrize("step", EXAMPLES)
def test_every_step_on_a_voxel_or_a_single_slice_keeps_the_grid_or_names_itself(step, shape):
    image = Image(torch.rand(1, *shape) + 1, OBLIQUE)
    try:
        out = enhance(image, step)
    except SegmorphError as err:
        named = (f"{step}: the filter cannot process this image (", f"step {step!r}: ")
        assert str(err).startswith(named) and "\n" not in str(err)
        return
    assert out.spatial_shape == image.spatial_shape and torch.isfinite(out.data).all()


def test_the_public_api():
    image, _ = sphere_case()
    out = sm.enhance(image, ["window:40,400", "clahe"])
    assert out.affine is image.affine


@pytest.mark.parametrize(("text", "names"), [
    ("channel:green,clahe", ["channel:green", "clahe"]),
    ("window:40,400,clip:p0.5,p99.5,open:2", ["window:40,400", "clip:p0.5,p99.5", "open:2"]),
    ("n4:shrink=2,mask=all, denoise:median", ["n4:shrink=2,mask=all", "denoise:median"]),
    ("window:-600,1500", ["window:-600,1500"]),
    ("", []),
])  # fmt: skip
def test_parse_steps_splits_text_at_step_names(text, names):
    assert [s.text for s in parse_steps(text)] == names


@pytest.mark.parametrize(("step", "words"), [
    ("blur", "unknown step 'blur'"),
    ("denoise:foo", "denoise:gaussian|median"),
    ("denoise", "denoise:gaussian|median"),
    ("window:40", "preset"),
    ("window:40,-5", "width must be positive"),
    ("window:ab,400", "level must be a number"),
    ("clip:p5,3", "both bounds"),
    ("clip:p90,p10", "low < high"),
    ("open:x", "radius (voxels) must be a whole number"),
    ("open:0", "at least 1"),
    ("channel:purple", "red, green, blue"),
    ("clahe:2", "clip limit"),
    ("n4:shrink=0", "at least 1"),
    ("n4:mask=brain", "unknown parameter"),
    ("frangi:-1", "positive"),
    ("rescale:3", "expected 0 parameter"),
    ("canny:nan", "finite"),
])  # fmt: skip
def test_bad_steps_raise_one_error_naming_the_step(step, words):
    with pytest.raises(SegmorphError) as caught:
        parse_steps([step])
    message = str(caught.value)
    assert message.startswith(f"step {step!r}:") and words in message and "\n" not in message


@pytest.mark.parametrize(("step", "words"), [
    ("clahe", "not on label maps"), ("window:brain", "not on label maps"), ("invert", "binary label maps"),
])  # fmt: skip
def test_intensity_steps_refuse_label_maps(step, words):
    _, labels = sphere_case()
    with pytest.raises(SegmorphError, match=words):
        enhance(labels, step)


def test_largest_component_refuses_an_image_and_channel_a_missing_channel():
    image, _ = sphere_case()
    with pytest.raises(SegmorphError, match="step 'largest-component': .* label maps"):
        enhance(image, "largest-component")
    with pytest.raises(SegmorphError, match="step 'channel:green': channel 1 asked of an image with 1 channel"):
        enhance(image, "channel:green")
