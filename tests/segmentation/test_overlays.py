"""Overlay pictures: prediction fill and reference outline both drawn, legends with label names, native
resolution for 2D images, titles apart; validation, predict and registration pictures use them."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
import torch

from helpers import OBLIQUE, sphere_case, write_msd_dataset
from segmorph import plots
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.plots import FILL_ALPHA, LABEL_COLOURS, REFERENCE_COLOUR, overlay_figure, overlay_slices
from segmorph.registration import pictures
from segmorph.segmentation.datasets import load_dataset
from segmorph.segmentation.pipeline import worst_cases, write_validation_overlays
from segmorph.segmentation.predict import Predictor, predict_files


def _rgb(path: Path) -> np.ndarray:
    return matplotlib.image.imread(path)[..., :3].astype(np.float64)


def _count_near(picture: np.ndarray, colour: np.ndarray, tolerance: float) -> int:
    return int((np.abs(picture - colour).max(-1) < tolerance).sum())


def _legend_texts(figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def _squares(shape=(30, 30, 8)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A black image, a predicted square and a reference square shifted from it (they overlap in part)."""
    labels, reference = np.zeros(shape, np.uint8), np.zeros(shape, np.int64)
    labels[5:15, 5:15, 1:7] = 1
    reference[10:20, 10:20, 1:7] = 1
    return np.zeros((1, *shape), np.float32), labels, reference


def test_prediction_fill_and_reference_outline_both_in_the_png(tmp_path: Path) -> None:
    image, labels, reference = _squares()
    path = overlay_slices(image, labels, tmp_path / "o.png", reference, title="case", label_names={1: "Anterior"})
    picture = _rgb(path)
    fill = FILL_ALPHA * LABEL_COLOURS[1]  # over a black image
    assert _count_near(picture, fill, 0.01) > 1000  # 3 panels of 10 x 10 pixels enlarged 20 times, less the outline
    assert _count_near(picture, REFERENCE_COLOUR, 0.05) > 300
    alone = _rgb(overlay_slices(image, labels, tmp_path / "alone.png"))
    assert _count_near(alone, REFERENCE_COLOUR, 0.05) == 0 and _count_near(alone, fill, 0.01) > 1000


def test_legend_names_labels_and_styles() -> None:
    image, labels, reference = _squares()
    labels[20:25, 20:25, 2] = 3
    figure = overlay_figure(image, labels, reference, label_names={0: "background", 1: "Anterior", 2: "Posterior"})
    texts = _legend_texts(figure)
    assert texts == ["Anterior", "Posterior", "label 3", "reference"]
    assert "reference: cyan outline" in figure.legends[0].get_title().get_text()
    plots.plt.close(figure)
    figure = overlay_figure(image, labels)
    assert _legend_texts(figure) == ["label 1", "label 3"]
    assert figure.legends[0].get_title().get_text() == "prediction: coloured fill"
    plots.plt.close(figure)


def test_titles_captions_legend_and_panels_do_not_overlap() -> None:
    image, labels, reference = _squares()
    title = "a long case name: mean Dice 0.512 (validation)"
    figure = overlay_figure(image, labels, reference, title=title)
    renderer = figure.canvas.get_renderer()
    (suptitle,) = [text for text in figure.findobj(plots.plt.Text) if text.get_text() == title]
    boxes = [suptitle.get_window_extent(renderer), figure.legends[0].get_window_extent(renderer)]
    assert len(figure.axes) == 3
    for axis in figure.axes:
        assert axis.get_title().startswith("K = ")
        boxes += [axis.title.get_window_extent(renderer), axis.get_window_extent(renderer)]
    for first in range(len(boxes)):
        for second in range(first + 1, len(boxes)):
            assert not boxes[first].overlaps(boxes[second]), (first, second)
    plots.plt.close(figure)


def test_a_2d_image_keeps_its_resolution_without_a_slice_caption(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(10, 200, (3, 584, 565)).astype(np.float32)  # RGB, DRIVE's size
    labels = np.zeros((584, 565), np.uint8)
    labels[100:104, 50:500] = 1  # a thin vessel
    reference = np.roll(labels, 2, axis=0)
    figure = overlay_figure(image, labels, reference, title="21_training")
    (axis,) = figure.axes
    extent = axis.get_window_extent(figure.canvas.get_renderer())
    assert (round(extent.width), round(extent.height)) == (584, 565)  # one image pixel, one output pixel
    assert axis.get_title() == "" and not any("slice" in t.get_text() for t in figure.findobj(plots.plt.Text))
    plots.plt.close(figure)
    path = overlay_slices(image, labels, tmp_path / "drive.png", reference, title="21_training")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width >= 584 and height >= 565


def test_a_black_frame_is_cropped_and_small_images_are_enlarged_by_a_whole_factor() -> None:
    image = np.zeros((1, 60, 40), np.float32)
    image[0, 10:50, 10:30] = np.random.default_rng(1).uniform(50, 100, (40, 20))
    labels = np.zeros((60, 40), np.uint8)
    labels[20:30, 15:25] = 2
    figure = overlay_figure(image, labels)
    extent = figure.axes[0].get_window_extent(figure.canvas.get_renderer())
    scale = math.ceil(plots.MIN_PANEL_PX / 44)  # field of view 40 x 20 plus a 2-pixel margin each side
    assert (round(extent.width), round(extent.height)) == (44 * scale, 24 * scale)
    plots.plt.close(figure)


def test_overlay_rejects_a_label_map_of_another_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reference: expected the shape of labels"):
        overlay_slices(np.zeros((1, 8, 8)), np.zeros((8, 8), int), tmp_path / "x.png", np.zeros((8, 9), int))
    assert not (tmp_path / "x.png").exists()


def test_worst_cases_are_the_lowest_mean_dice_nan_first() -> None:
    rows = [{"case": "a", "dice": 0.9}, {"case": "a", "dice": 0.7}, {"case": "b", "dice": 0.5},
            {"case": "c", "dice": float("nan")}, {"case": "d", "dice": 0.95}]  # fmt: skip
    worst = worst_cases(rows, 3)
    assert [case for case, _ in worst] == ["c", "b", "a"]
    assert worst[2][1] == pytest.approx(0.8)


def test_validation_overlays_show_prediction_and_reference_of_the_worst_cases(tmp_path: Path) -> None:
    spec = load_dataset(write_msd_dataset(tmp_path / "dataset", num_cases=3))
    run_dir = tmp_path / "run"
    for case in spec.cases:
        _, label = sphere_case(seed=int(case.case_id[-1]))
        shifted = torch.roll(label.data, 4, dims=1)  # the prediction misses the reference in part
        write_image(label.with_data(shifted, is_label=True), run_dir / "validation" / f"{case.case_id}.nii.gz")
    rows = [{"case": "case_000", "dice": 0.9}, {"case": "case_001", "dice": 0.3}, {"case": "case_002", "dice": 0.6}]
    written = write_validation_overlays(run_dir, spec, rows, {1: "outer", 2: "core"}, count=2)
    assert [p.name for p in written] == ["case_001_overlay.png", "case_002_overlay.png"]
    assert all(p.parent == run_dir / "validation" / "overlays" for p in written)
    picture = _rgb(written[0])
    red, green, blue = picture[..., 0], picture[..., 1], picture[..., 2]
    assert ((red > green + 0.2) & (red > blue + 0.1)).sum() > 500  # "outer" filled red over grey
    assert _count_near(picture, REFERENCE_COLOUR, 0.05) > 100  # the reference outline


def test_predict_overlays_name_the_run_labels(tmp_path: Path, monkeypatch) -> None:
    image, label = sphere_case(seed=4)
    write_image(image, tmp_path / "scan.nii.gz")
    predictor = Predictor.__new__(Predictor)  # the run's plan and a fixed answer instead of a trained model
    predictor.run_dir = tmp_path / "run"
    predictor.run_dir.mkdir()
    predictor.plan = SimpleNamespace(labels={0: "background", 1: "Anterior", 2: "Posterior"})
    predictor.segment = lambda scan: (Image(label.data.to(torch.uint8), scan.affine, is_label=True), None)
    legends, save = [], plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda figure, path, **kw: legends.append(_legend_texts(figure)) or save(figure, path, **kw))  # fmt: skip
    predict_files(predictor, [tmp_path / "scan.nii.gz"], tmp_path / "out", overlays=True, show_progress=False)
    assert legends == [["Anterior", "Posterior"]]
    assert (tmp_path / "out" / "scan_overlay.png").is_file()


@pytest.mark.parametrize("moving", [False, True])
def test_registration_label_picture_has_a_legend(tmp_path: Path, monkeypatch, moving: bool) -> None:
    data = np.zeros((1, 20, 24, 16), np.float32)
    data[0, 5:15, 6:18, 4:12] = 100
    fixed = Image(torch.from_numpy(data), OBLIQUE)
    labels = fixed.with_data((fixed.data > 50).long(), is_label=True)
    legends, save = [], pictures.save_figure
    monkeypatch.setattr(pictures, "save_figure", lambda figure, path, **kw: legends.append(_legend_texts(figure)) or save(figure, path, **kw))  # fmt: skip
    after = labels.with_data(labels.data * 2, is_label=True) if moving else None
    pictures.plot_label_contours(labels, fixed, fixed, tmp_path / "labels.png", after_labels=after,
                                 label_names={0: "background", 1: "Anterior"})  # fmt: skip
    expected = ["Anterior", "label 2", "fixed", "moving"] if moving else ["Anterior", "fixed"]
    assert legends == [expected]
    assert (tmp_path / "labels.png").stat().st_size > 1000


def test_training_writes_validation_overlays_with_reference(trained_run: Path) -> None:
    folder = trained_run / "validation" / "overlays"
    assert sorted(p.name for p in folder.iterdir()) == ["case_000_overlay.png", "case_001_overlay.png"]
    for path in folder.iterdir():
        assert _count_near(_rgb(path), REFERENCE_COLOUR, 0.05) > 20  # the reference outline is drawn
