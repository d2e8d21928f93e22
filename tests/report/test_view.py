"""``segmorph view`` (:mod:`segmorph.report.view`, :mod:`segmorph.report.view_files`): page content, pairing
and errors, ``predict --view`` and ``evaluate --view``, and the page in a real browser (Chromium, CDP)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from chromium import DevTools, _page_socket, _start_browser, _stop_browser, chromium
from helpers import OBLIQUE
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.plots import LABEL_COLOURS
from segmorph.report.view import ViewCase, build_view, contrasting_palette, plane_layout, thinning_step
from segmorph.report.view_files import label_names, prediction_view, view_cases, write_view

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
SHAPE = (20, 16, 12)


def _volume(shift: int = 0) -> tuple[Image, Image]:
    """A scan whose values change along every axis, and a label map: 1 in a box, 2 in a smaller box inside."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    labels = np.zeros(SHAPE, np.int64)
    labels[5 + shift : 15 + shift, 4:12, 3:9] = 1
    labels[11 + shift : 14 + shift, 5:8, 4:8] = 2
    values = 100 + 3 * i + 5 * j + 7 * k + 40 * labels
    return (Image(torch.from_numpy(values[None].astype(np.float32)), OBLIQUE),
            Image(torch.from_numpy(labels[None]), OBLIQUE, is_label=True))  # fmt: skip


def _dataset_json(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    labels = {"0": "background", "1": "Anterior", "2": "Posterior"}
    (folder / "dataset.json").write_text(json.dumps({"name": "hippo", "modality": {"0": "MRI"}, "labels": labels}))
    return folder


def _case_blocks(page: str) -> list[dict]:
    blocks = re.findall(r'<script type="application/json" id="view-case-\d+">(.*?)</script>', page, re.S)
    return [json.loads(block) for block in blocks]


def _folders(root: Path) -> tuple[Path, Path, Path]:
    """scans/ (nnU-Net channel names), pred/ and ref/ for cases a, b, c: the prediction of a is shifted by one
    voxel, that of b by two, c has none."""
    for n, case in enumerate(("a", "b", "c")):
        image, reference = _volume()
        _, predicted = _volume(shift=1 + n)
        write_image(image, root / "scans" / f"{case}_0000.nii.gz")
        write_image(reference, root / "ref" / f"{case}.nii.gz")
        if case != "c":
            write_image(predicted, root / "pred" / f"{case}.nii.gz")
    return root / "scans", root / "pred", root / "ref"


# -- page content ---------------------------------------------------------------------------------


def test_one_scan_page_is_self_contained_and_names_labels(tmp_path: Path) -> None:
    image, labels = _volume()
    write_image(image, tmp_path / "scan.nii.gz")
    write_image(labels, tmp_path / "mask.nii.gz")
    out = tmp_path / "sub" / "view.html"
    assert main(["view", str(tmp_path / "scan.nii.gz"), str(tmp_path / "mask.nii.gz"), "--out", str(out),
                 "--labels-from", str(_dataset_json(tmp_path / "data"))]) == 0  # fmt: skip
    page = out.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and not EXTERNAL.search(page)
    legend = page[page.index('class="view-legend"') :]
    assert "Anterior" in legend and "Posterior" in legend
    assert 'class="view-cases"' not in page  # one case: no case list
    (case,) = _case_blocks(page)
    assert case["shape"] == list(SHAPE) and case["step"] == 1 and case["unit"] == "mm"
    assert [p["caption"].split(" ·")[0] for p in case["planes"]] == ["axial", "coronal", "sagittal"]
    assert case["start"][2] in range(3, 9)  # a slice through the labels
    assert [p.name for p in out.parent.iterdir()] == ["view.html"]  # no temporary file left behind


def test_hippocampus_sized_case_stays_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    affine = Affine.from_geometry((1.0, 1.0, 1.0))
    noise = rng.normal(300, 80, (1, 35, 50, 35)).astype(np.float32)  # noise: the worst case for compression
    labels = (rng.uniform(size=(1, 35, 50, 35)) > 0.9).astype(np.int64) * rng.integers(1, 3, (1, 35, 50, 35))
    write_image(Image(torch.from_numpy(noise), affine), tmp_path / "scan.nii.gz")
    write_image(Image(torch.from_numpy(labels), affine, is_label=True), tmp_path / "mask.nii.gz")
    mask = tmp_path / "mask.nii.gz"
    out = write_view(tmp_path / "scan.nii.gz", [mask, mask], tmp_path / "v.html")
    assert out.stat().st_size < 400_000


def test_ct_ranges_get_ct_windows_and_large_volumes_are_thinned(tmp_path: Path, monkeypatch) -> None:
    import segmorph.report.view as view

    image, labels = _volume()
    hounsfield = image.with_data(image.data * 10 - 2000)  # -1000 .. 1890, whole numbers
    write_image(hounsfield, tmp_path / "ct.nii.gz")
    write_image(labels, tmp_path / "mask.nii.gz")
    monkeypatch.setattr(view, "MAX_VOXELS", 400)
    page = write_view(tmp_path / "ct.nii.gz", [tmp_path / "mask.nii.gz"], tmp_path / "v.html").read_text()
    (case,) = _case_blocks(page)
    assert [w["name"].split(" (")[0] for w in case["windows"]] == ["auto", "full range", "CT brain", "CT bone",
                                                                    "CT lung", "CT soft"]  # fmt: skip
    assert case["image"]["bytes"] == 2 and case["image"]["offset"] == -1000 and case["image"]["scale"] == 1
    assert case["step"] == 3 and case["shape"] == [7, 6, 4] and case["original_shape"] == list(SHAPE)
    assert "one voxel in 3 along each axis" in case["facts"]


def test_rgb_picture_is_one_plane_at_native_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, (3, 565, 584)).astype(np.uint8)  # (C, I, J): 584 rows of 565 pixels
    mask = np.zeros((1, 565, 584), np.int64)
    mask[:, 100:300, 200:260] = 1
    write_image(Image(torch.from_numpy(picture), Affine.identity(2)), tmp_path / "21.png")
    write_image(Image(torch.from_numpy(mask), Affine.identity(2), is_label=True), tmp_path / "21_mask.png")
    out = write_view(tmp_path / "21.png", [tmp_path / "21_mask.png"], tmp_path / "v.html")
    assert out.stat().st_size < 3_000_000
    (case,) = _case_blocks(out.read_text(encoding="utf-8"))
    assert case["channels"] == 3 and case["image"]["bytes"] == 1 and case["unit"] == "px"
    assert len(case["planes"]) == 1 and case["planes"][0]["size"] == [565, 584]


def _view_data(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="view-data">(.*?)</script>', page, re.S)[1])


def test_labels_on_a_reddish_rgb_picture_are_not_red(tmp_path: Path) -> None:
    picture = np.zeros((3, 40, 30), np.uint8)
    picture[0], picture[1], picture[2] = 190, 70, 30  # a fundus-like orange-red
    mask = np.zeros((1, 40, 30), np.int64)
    mask[:, 10:20, 5:15] = 1
    mask[:, 25:30, 5:15] = 2
    write_image(Image(torch.from_numpy(picture), Affine.identity(2)), tmp_path / "fundus.png")
    write_image(Image(torch.from_numpy(mask), Affine.identity(2), is_label=True), tmp_path / "fundus_mask.png")
    page = write_view(tmp_path / "fundus.png", [tmp_path / "fundus_mask.png"], tmp_path / "v.html").read_text()
    meta = _view_data(page)
    for value in ("1", "2"):
        r, g, b = meta["colours"][value]
        assert r < max(g, b), f"label {value} is drawn red-dominant: {(r, g, b)}"
        assert f"background:rgb({r},{g},{b})" in page  # the legend's swatch
    assert meta["colours"]["1"] == [0, 255, 255] and contrasting_palette((190, 70, 30))[0] == (0, 255, 255)


def test_grey_scans_keep_the_plot_colours(tmp_path: Path) -> None:
    image, labels = _volume()
    write_image(image, tmp_path / "scan.nii.gz")
    write_image(labels, tmp_path / "mask.nii.gz")
    page = write_view(tmp_path / "scan.nii.gz", [tmp_path / "mask.nii.gz"], tmp_path / "v.html").read_text()
    expected = (LABEL_COLOURS[1] * 255).round().astype(int).tolist()
    assert _view_data(page)["colours"]["1"] == expected


def test_folders_make_a_case_list_matched_by_case_name(tmp_path: Path) -> None:
    scans, pred, ref = _folders(tmp_path)
    cases, layers = view_cases([scans], [pred, ref])
    assert layers == ["pred", "ref"]
    assert [c.name for c in cases] == ["a", "b", "c"]
    assert cases[2].masks == (None, ref / "c.nii.gz")
    out = tmp_path / "v.html"
    assert main(["view", str(scans), str(pred), "--masks", str(ref), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert re.findall(r'data-case="\d+">(\w+)<', page) == ["a", "b", "c"]
    assert "differences" in page and "label_1" in page and "label_2" in page
    assert len(_case_blocks(page)) == 3 and _case_blocks(page)[2]["masks"][0] is None


def test_evaluate_view_lists_the_worst_case_first(tmp_path: Path) -> None:
    scans, pred, ref = _folders(tmp_path)
    (ref / "c.nii.gz").unlink()  # evaluate needs a prediction for every reference
    out = tmp_path / "metrics" / "metrics.csv"
    assert main(["evaluate", str(pred), str(ref), "--out", str(out), "--view", "--scans", str(scans)]) == 0
    page = (out.parent / "view.html").read_text(encoding="utf-8")
    assert re.findall(r'data-case="\d+">(\w+)<', page) == ["b", "a"]  # b's prediction is shifted further
    assert "mean Dice" in page
    assert [block["image"] is not None for block in _case_blocks(page)] == [True, True]


def test_prediction_view_names_labels_from_the_run(tmp_path: Path) -> None:
    image, labels = _volume()
    write_image(image, tmp_path / "scans" / "k_0000.nii.gz")
    write_image(labels, tmp_path / "masks" / "k.nii.gz")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "plan.json").write_text(json.dumps({"labels": {"0": "background", "1": "outer", "2": "core"}}))
    page = prediction_view(tmp_path / "run", [tmp_path / "scans"], tmp_path / "masks").read_text(encoding="utf-8")
    assert "outer" in page and "core" in page and ">prediction<" in page


def test_predict_and_evaluate_take_view() -> None:
    from segmorph.cli.main import build_parser

    assert build_parser().parse_args(["predict", "run", "scans", "--out", "m", "--view"]).view
    assert build_parser().parse_args(["evaluate", "p", "r", "--view", "--scans", "s"]).scans == Path("s")


def test_label_names_from_runs_and_both_dataset_forms(tmp_path: Path) -> None:
    assert label_names(_dataset_json(tmp_path / "msd")) == {0: "background", 1: "Anterior", 2: "Posterior"}
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "vessel": 1}}))
    assert label_names(tmp_path / "v2" / "dataset.json") == {0: "background", 1: "vessel"}
    with pytest.raises(SegmorphError, match="neither plan.json"):
        label_names(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"labels": {"a": [1]}}))
    with pytest.raises(SegmorphError, match="cannot read entry"):
        label_names(tmp_path / "bad.json")


def test_plane_layout_names_planes_by_the_world_axis() -> None:
    planes = plane_layout(Affine.from_geometry((1.0, 1.0, 2.0)), [10, 10, 5], 1)
    assert [(p["axis"], p["flip"]) for p in planes] == [(2, False), (1, True), (0, True)]  # superior up
    assert planes[1]["caption"] == "coronal · slices along J · I across, K up"
    assert planes[1]["size"] == [360, 360] and planes[0]["size"] == [360, 360]
    swapped = Affine.from_geometry((1.0, 1.0, 1.0), direction=[[0, 0, 1], [0, 1, 0], [1, 0, 0]])  # I runs along z
    assert plane_layout(swapped, [4, 5, 6], 1)[0]["caption"].startswith("axial · slices along I")
    assert thinning_step((20, 16, 12)) == 1 and thinning_step((512, 512, 300)) == 2


# -- errors -----------------------------------------------------------------------------------------


def test_mask_off_the_grid_is_one_line_naming_the_mask(tmp_path: Path, capsys) -> None:
    image, labels = _volume()
    write_image(image, tmp_path / "scan.nii.gz")
    moved = Image(labels.data, Affine.from_geometry((0.8, 1.1, 2.5), (5.0, 0.0, 0.0)), is_label=True)
    write_image(moved, tmp_path / "moved.nii.gz")
    out = tmp_path / "v.html"
    assert main(["view", str(tmp_path / "scan.nii.gz"), str(tmp_path / "moved.nii.gz"), "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {tmp_path / 'moved.nii.gz'}: mask grid differs from scan")
    assert not out.exists()


def test_pairing_and_output_errors(tmp_path: Path) -> None:
    scans, pred, _ = _folders(tmp_path)
    with pytest.raises(SegmorphError, match="a mask file goes with one scan"):
        view_cases([scans], [pred / "a.nii.gz"])
    (tmp_path / "other").mkdir()
    write_image(_volume()[1], tmp_path / "other" / "zzz.nii.gz")
    with pytest.raises(SegmorphError, match="no mask is named like a scan"):
        view_cases([scans], [tmp_path / "other"])
    with pytest.raises(SegmorphError, match="overwrite|input"):
        write_view(scans / "a_0000.nii.gz", [pred / "a.nii.gz"], pred / "a.nii.gz")
    with pytest.raises(SegmorphError, match="nothing to show"):
        build_view([], tmp_path / "v.html")
    with pytest.raises(SegmorphError, match="neither a scan nor a mask"):
        build_view([ViewCase("x", None, (None,))], tmp_path / "v.html", ["m"])


# -- the page in Chromium ---------------------------------------------------------------------------

READY = "window.segmorphView.ready"
PIXELS = "Array.from(document.querySelectorAll('.view-plane canvas')).map(c => c.toDataURL())"
MOVE = """(() => {
  const figure = document.querySelectorAll('.view-plane')[%d];
  const slider = figure.querySelector('input[type=range]');
  const before = [figure.querySelector('canvas').toDataURL(), figure.querySelector('.slice-number').textContent];
  slider.value = String(Number(slider.value) >= 2 ? 0 : Number(slider.max));
  slider.dispatchEvent(new Event('input', {bubbles: true}));
  return {before: before, after: [figure.querySelector('canvas').toDataURL(),
                                  figure.querySelector('.slice-number').textContent]};
})()"""
CLICK = "document.querySelector(%r).click()"
HOVER = """(() => {
  const canvas = document.querySelector('.view-plane canvas');
  const box = canvas.getBoundingClientRect();
  canvas.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: box.left + box.width * %f,
                                                     clientY: box.top + box.height * %f}));
  return document.querySelector('.view-hover').textContent;
})()"""


def _open(html: Path, profile: Path):
    process, port = _start_browser(chromium(), profile)
    tools = DevTools(_page_socket(port))
    for domain in ("Runtime", "Log", "Page", "Network"):
        tools.call(f"{domain}.enable")
    tools.call("Emulation.setDeviceMetricsOverride", width=1400, height=1400, deviceScaleFactor=1, mobile=False)
    tools.call("Page.navigate", url=html.resolve().as_uri())
    tools.wait_for("Page.loadEventFired")
    assert tools.evaluate(READY) is True
    return process, tools


def test_view_in_chromium(tmp_path: Path) -> None:
    chromium()
    scans, pred, ref = _folders(tmp_path)
    out = tmp_path / "view.html"
    assert main(["view", str(scans), str(pred), str(ref), "--out", str(out),
                 "--labels-from", str(_dataset_json(tmp_path / "data"))]) == 0  # fmt: skip
    process, tools = _open(out, tmp_path / "profile")
    try:
        legend = tools.evaluate("document.querySelector('.view-legend').textContent")
        assert "Anterior" in legend and "Posterior" in legend
        # hover the axial plane at voxel I = 10, J = 8: inside label 1 of the reference
        text = tools.evaluate(HOVER % (10.5 / SHAPE[0], 8.5 / SHAPE[1]))
        index = [int(v) for v in re.search(r"voxel \(I, J, K\) = \((\d+), (\d+), (\d+)\)", text).groups()]
        assert index[:2] == [10, 8] and 3 <= index[2] < 9, text
        world = OBLIQUE.voxel_to_world(np.array(index, float))
        assert f"position (x, y, z) = ({', '.join(f'{v:.2f}' for v in world)}) mm" in text, text
        assert "ref: Anterior (1)" in text and "pred: " in text, text
        # each mask layer, the outline and the differences change the picture
        for control in ('input.layer-shown[data-layer="0"]', 'input.layer-shown[data-layer="1"]',
                        'input.layer-outline[data-layer="0"]', "input.view-differences"):  # fmt: skip
            before = tools.evaluate(PIXELS)[0]
            tools.evaluate(CLICK % control)
            assert tools.evaluate(PIXELS)[0] != before, control
            tools.evaluate(CLICK % control)
            assert tools.evaluate(PIXELS)[0] == before, control
        before = tools.evaluate(PIXELS)[0]
        tools.evaluate("(() => { const c = document.querySelector('input.view-contrast'); c.value = '60';"
                       " c.dispatchEvent(new Event('input')); })()")  # fmt: skip
        assert tools.evaluate(PIXELS)[0] != before, "contrast"
        for plane in range(3):  # every slider moves its plane and its slice number
            moved = tools.evaluate(MOVE % plane)
            assert moved["after"][0] != moved["before"][0], f"plane {plane}: picture unchanged"
            assert moved["after"][1] != moved["before"][1], f"plane {plane}: slice number unchanged"
        facts = tools.evaluate("document.querySelector('.view-facts').textContent")
        tools.evaluate(CLICK % 'button[data-case="1"]')
        assert tools.evaluate(READY) is True
        assert tools.evaluate("document.querySelector('.view-facts').textContent") != facts
        assert tools.evaluate("document.querySelector('button.current').textContent") == "b"
        shot = tools.call("Page.captureScreenshot", format="png")["data"]
        assert shot
        assert tools.errors() == []
        sent = [e["params"]["request"]["url"] for e in tools.events if e.get("method") == "Network.requestWillBeSent"]
        assert set(sent) <= {out.resolve().as_uri()}, sent
    finally:
        _stop_browser(process)
