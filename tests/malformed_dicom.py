"""Malformed-input cases: hostile DICOM for anonymize and the series reader (classes 4, 6, 7).

Each case is a :class:`malformed.BadInput`; :func:`malformed.corpus` gathers ``CASES``. The byte-level writers
(:func:`tiny_dicom`, :func:`nested_sequences`, :func:`element`) are shared with tests/dicom/test_anonymize.py.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from malformed import BadInput, Prepared, _dicom_series

ITEM, ITEM_END, SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
UNDEFINED = 0xFFFFFFFF
CONTENT_SEQUENCE = (0x0040, 0xA730)
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def element(tag: tuple[int, int], vr: str | None, value: bytes, length: int | None = None) -> bytes:
    """One little-endian element: explicit VR when ``vr`` is given, implicit when None; ``length`` overrides."""
    size = len(value) if length is None else length
    if vr is None:
        return struct.pack("<HHL", *tag, size) + value
    if vr in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OD", "OF", "OL", "OV", "SV", "UV"):
        return struct.pack("<HH2sHL", *tag, vr.encode(), 0, size) + value
    return struct.pack("<HH2sH", *tag, vr.encode(), size) + value


def item(value: bytes, undefined: bool = False) -> bytes:
    """A sequence item holding ``value`` (encoded elements), of defined or undefined length."""
    if undefined:
        return struct.pack("<HHL", *ITEM, UNDEFINED) + value + struct.pack("<HHL", *ITEM_END, 0)
    return struct.pack("<HHL", *ITEM, len(value)) + value


def sequence(tag: tuple[int, int], items: bytes, vr: str | None = "SQ", undefined: bool = False) -> bytes:
    """A sequence element around encoded ``items``."""
    if undefined:
        return element(tag, vr, items + struct.pack("<HHL", *SEQUENCE_END, 0), length=UNDEFINED)
    return element(tag, vr, items)


def nested_sequences(
    depth: int, tag: tuple[int, int] = CONTENT_SEQUENCE, vr: str | None = "SQ", undefined: bool = False
) -> bytes:
    """``depth`` sequences, each the only element of the single item of the one above (built without recursion)."""
    body = element((0x0040, 0xA160), vr and "UT", b"innermost text") if vr else element((0x0040, 0xA160), None, b"xx")
    for _ in range(depth):
        body = sequence(tag, item(body, undefined), vr, undefined)
    return body


def tiny_dicom(path: Path, extra: bytes = b"", implicit: bool = False, **attributes: object) -> Path:
    """A small valid DICOM Part 10 file (no pixel data) with encoded ``extra`` elements appended to its data set."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MR_STORAGE, "1.2.826.0.1.3680043.2.1125.9.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.9.2", "1.2.826.0.1.3680043.2.1125.9.3"
    ds.PatientName, ds.PatientID, ds.Modality, ds.InstanceNumber = "Doe^Jane", "ID-31415", "MR", 1
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = MR_STORAGE, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue() + extra)
    return path


def _anonymize(tmp: Path, name: str, extra: bytes, implicit: bool = False) -> Prepared:
    """A study folder holding one good file and ``name`` (a tiny file with ``extra`` elements)."""
    folder = tmp / "study"
    tiny_dicom(folder / "good.dcm")
    tiny_dicom(folder / name, extra, implicit, SOPInstanceUID="1.2.826.0.1.3680043.2.1125.9.4")
    out = tmp / "anonymized"
    return Prepared(["anonymize", str(folder), "--out", str(out)], name, out)


# -- anonymize: depth bombs (class 4) --------------------------------------------------------------


def depth_bomb_defined_lengths(tmp: Path, run: Path | None) -> Prepared:
    return _anonymize(tmp, "nested_defined.dcm", nested_sequences(400))


def depth_bomb_undefined_lengths(tmp: Path, run: Path | None) -> Prepared:
    return _anonymize(tmp, "nested_undefined.dcm", nested_sequences(400, undefined=True))


def depth_bomb_without_delimiters(tmp: Path, run: Path | None) -> Prepared:
    opening = element(CONTENT_SEQUENCE, "SQ", b"", length=UNDEFINED) + struct.pack("<HHL", *ITEM, UNDEFINED)
    return _anonymize(tmp, "nested_open.dcm", opening * 1000)


def depth_bomb_implicit_vr(tmp: Path, run: Path | None) -> Prepared:
    return _anonymize(tmp, "nested_implicit.dcm", nested_sequences(300, vr=None, undefined=True), implicit=True)


def depth_bomb_as_un(tmp: Path, run: Path | None) -> Prepared:
    """Undefined-length UN elements are sequences (PS3.5 6.2.2): nested 300 deep."""
    return _anonymize(tmp, "nested_un.dcm", nested_sequences(300, vr="UN", undefined=True))


def depth_bomb_private(tmp: Path, run: Path | None) -> Prepared:
    """A private sequence (removed from the output, but parsed first) nested 300 deep."""
    creator = element((0x0009, 0x0010), "LO", b"SEGMORPH")
    return _anonymize(tmp, "nested_private.dcm", creator + nested_sequences(300, tag=(0x0009, 0x1001)))


def depth_bomb_just_over_limit(tmp: Path, run: Path | None) -> Prepared:
    return _anonymize(tmp, "nested_65.dcm", nested_sequences(65))


# -- anonymize: broken structure -------------------------------------------------------------------


def truncated_inside_sequence(tmp: Path, run: Path | None) -> Prepared:
    whole = nested_sequences(5)  # defined lengths; the cut falls inside the innermost item
    return _anonymize(tmp, "cut_in_sequence.dcm", whole[: len(whole) - 10])


def undefined_sequence_without_delimiter(tmp: Path, run: Path | None) -> Prepared:
    items = item(element((0x0040, 0xA160), "UT", b"some text"))
    return _anonymize(tmp, "open_sequence.dcm", element(CONTENT_SEQUENCE, "SQ", items, length=UNDEFINED))


def element_length_beyond_file(tmp: Path, run: Path | None) -> Prepared:
    return _anonymize(tmp, "long_claim.dcm", element((0x0040, 0xA160), "UT", b"short", length=0x7FFFFFF0))


def item_longer_than_its_sequence(tmp: Path, run: Path | None) -> Prepared:
    body = element((0x0040, 0xA160), "UT", b"text in the item")
    items = struct.pack("<HHL", *ITEM, len(body) + 400) + body
    return _anonymize(tmp, "long_item.dcm", element(CONTENT_SEQUENCE, "SQ", items) + b"\0" * 600)


def non_item_inside_sequence(tmp: Path, run: Path | None) -> Prepared:
    return _anonymize(tmp, "no_item.dcm", sequence(CONTENT_SEQUENCE, element((0x0040, 0xA160), "UT", b"loose")))


def stray_item_delimiter(tmp: Path, run: Path | None) -> Prepared:
    """An item delimiter at the top level: pydicom would silently stop reading there."""
    tail = struct.pack("<HHL", *ITEM_END, 0) + element((0x0040, 0xA160), "UT", b"never read")
    return _anonymize(tmp, "stray_delimiter.dcm", tail)


def pixel_fragments_without_delimiter(tmp: Path, run: Path | None) -> Prepared:
    fragments = item(b"") + item(b"\xff\xd8" + b"\0" * 30)
    return _anonymize(tmp, "open_pixels.dcm", element((0x7FE0, 0x0010), "OB", fragments, length=UNDEFINED))


def corrupt_deflate_stream(tmp: Path, run: Path | None) -> Prepared:
    folder = tmp / "study"
    path = tiny_dicom(folder / "deflated.dcm")
    raw = bytearray(path.read_bytes())
    plain_ts, deflated_ts = ExplicitVRLittleEndian.encode(), b"1.2.840.10008.1.2.1.99"
    start = raw.index(plain_ts)
    struct.pack_into("<H", raw, start - 2, len(deflated_ts))  # the element's 2-byte length
    meta_end = _meta_end(bytes(raw))
    body = zlib.compress(bytes(raw[meta_end:]))[2:-4]  # raw deflate
    cut = bytes(raw[:start]) + deflated_ts + bytes(raw[start + len(plain_ts) : meta_end])
    path.write_bytes(_fix_meta_length(cut) + body[: len(body) // 2] + b"\xff" * 16)
    out = tmp / "anonymized"
    return Prepared(["anonymize", str(folder), "--out", str(out)], "deflated.dcm", out)


def _meta_end(data: bytes) -> int:
    position = 132
    while struct.unpack_from("<H", data, position)[0] == 0x0002:
        vr = data[position + 4 : position + 6]
        if vr in (b"OB", b"UN", b"UT", b"SQ"):
            position += 12 + struct.unpack_from("<L", data, position + 8)[0]
        else:
            position += 8 + struct.unpack_from("<H", data, position + 6)[0]
    return position


def _fix_meta_length(data: bytes) -> bytes:
    """Rewrite (0002,0000) FileMetaInformationGroupLength after the meta header changed size."""
    raw = bytearray(data)
    assert struct.unpack_from("<HH", raw, 132) == (0x0002, 0x0000)
    struct.pack_into("<L", raw, 140, len(raw) - 144)
    return bytes(raw)


def meta_element_beyond_file(tmp: Path, run: Path | None) -> Prepared:
    folder = tmp / "study"
    tiny_dicom(folder / "good.dcm")
    path = folder / "meta_cut.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + element((0x0002, 0x0001), "OB", b"\0\1", length=5000))
    out = tmp / "anonymized"
    return Prepared(["anonymize", str(folder), "--out", str(out)], "meta_cut.dcm", out)


# -- anonymize: folders ----------------------------------------------------------------------------


def dicomdir_only_folder(tmp: Path, run: Path | None) -> Prepared:
    folder = tmp / "media"
    folder.mkdir()
    shutil.copy(get_testdata_file("DICOMDIR"), folder / "DICOMDIR")
    out = tmp / "anonymized"
    return Prepared(["anonymize", str(folder), "--out", str(out)], "media", out)


def output_inside_input(tmp: Path, run: Path | None) -> Prepared:
    folder = tmp / "study"
    tiny_dicom(folder / "good.dcm")
    out = folder / "anon"
    return Prepared(["anonymize", str(folder), "--out", str(out)], "anon", out)


def preambleless_file_claiming_dicm(tmp: Path, run: Path | None) -> Prepared:
    """``DICM`` at byte 0 instead of 128: not Part 10, skipped; a folder of only such files is refused."""
    folder = tmp / "no_preamble"
    data = tiny_dicom(tmp / "source.dcm").read_bytes()
    (tmp / "source.dcm").unlink()
    folder.mkdir()
    (folder / "slice.dcm").write_bytes(data[128:])
    out = tmp / "anonymized"
    return Prepared(["anonymize", str(folder), "--out", str(out)], "no_preamble", out)


def instance_without_sop_uids(tmp: Path, run: Path | None) -> Prepared:
    """Refused in the reading pass, before good.dcm (which sorts first) is written."""
    folder = tmp / "study"
    tiny_dicom(folder / "a_good.dcm")
    path = folder / "z_no_uids.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + element((0x0002, 0x0010), "UI", b"1.2.840.10008.1.2.1\0")
                     + element((0x0010, 0x0010), "PN", b"Doe^Jane"))  # fmt: skip
    out = tmp / "anonymized"
    return Prepared(["anonymize", str(folder), "--out", str(out)], "z_no_uids.dcm", out)


# -- the series reader (segmorph info FOLDER) ------------------------------------------------------


def series_mixed_uids(tmp: Path, run: Path | None) -> Prepared:
    folder = _dicom_series(tmp / "two_series", [0.0, 1.0, 2.0])
    other = _dicom_series(tmp / "other", [3.0, 4.0])
    for index, path in enumerate(sorted(other.iterdir())):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.1.78"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1125.1.78.{index}"
        ds.save_as(folder / f"extra_{index}.dcm")
    shutil.rmtree(other)
    return Prepared(["info", str(folder)], "two_series")


def series_slice_of_another_size(tmp: Path, run: Path | None) -> Prepared:
    folder = _dicom_series(tmp / "sizes", [0.0, 1.0, 2.0, 3.0])
    ds = pydicom.dcmread(folder / "slice_002.dcm")
    ds.Rows, ds.Columns, ds.PixelData = 6, 6, np.zeros((6, 6), np.int16).tobytes()
    ds.save_as(folder / "slice_002.dcm")
    return Prepared(["info", str(folder)], "sizes")


def series_slice_tilted(tmp: Path, run: Path | None) -> Prepared:
    """One slice with another orientation: not one volume."""
    folder = _dicom_series(tmp / "tilted", [0.0, 1.0, 2.0, 3.0])
    ds = pydicom.dcmread(folder / "slice_003.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    ds.save_as(folder / "slice_003.dcm")
    return Prepared(["info", str(folder)], "tilted")


def _edited_slice(tmp: Path, name: str, edit) -> Path:
    """A 4-slice series whose slice_002.dcm was rewritten by ``edit(dataset)``."""
    folder = _dicom_series(tmp / name, [0.0, 1.0, 2.0, 3.0])
    ds = pydicom.dcmread(folder / "slice_002.dcm")
    edit(ds)
    ds.save_as(folder / "slice_002.dcm")
    return folder


def series_slice_with_short_pixel_data(tmp: Path, run: Path | None) -> Prepared:
    """A slice whose pixel data lost its second half (8x8 int16 declared, 64 bytes kept)."""
    folder = _edited_slice(tmp, "short", lambda ds: setattr(ds, "PixelData", ds.PixelData[:64]))
    return Prepared(["info", str(folder)], "slice_002.dcm")


def file_with_more_frames_than_pixel_data(tmp: Path, run: Path | None) -> Prepared:
    """One file declaring 1000 frames of 8x8 with one frame of pixel data (GDCM reads memory beyond it)."""
    folder = _edited_slice(tmp, "frames", lambda ds: setattr(ds, "NumberOfFrames", 1000))
    return Prepared(["info", str(folder / "slice_002.dcm")], "slice_002.dcm")


def file_with_more_samples_than_pixel_data(tmp: Path, run: Path | None) -> Prepared:
    def rgb(ds: Dataset) -> None:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0

    folder = _edited_slice(tmp, "samples", rgb)
    return Prepared(["baseline", str(folder / "slice_002.dcm"), "--method", "otsu", "--out", str(tmp / "masks")],
                    "slice_002.dcm", tmp / "masks")  # fmt: skip


def file_with_12_bits_allocated(tmp: Path, run: Path | None) -> Prepared:
    folder = _edited_slice(tmp, "bits", lambda ds: setattr(ds, "BitsAllocated", 12))
    return Prepared(["enhance", str(folder / "slice_002.dcm"), "--steps", "clahe", "--out", str(tmp / "out.nii.gz")],
                    "slice_002.dcm", tmp / "out.nii.gz")  # fmt: skip


CASES: tuple[BadInput, ...] = (
    BadInput("anonymize_depth_bomb_defined_lengths", depth_bomb_defined_lengths, "nested deeper than 64 levels"),
    BadInput("anonymize_depth_bomb_undefined_lengths", depth_bomb_undefined_lengths, "nested deeper than 64"),
    BadInput("anonymize_depth_bomb_without_delimiters", depth_bomb_without_delimiters, "nested deeper than 64"),
    BadInput("anonymize_depth_bomb_implicit_vr", depth_bomb_implicit_vr, "nested deeper than 64"),
    BadInput("anonymize_depth_bomb_as_un", depth_bomb_as_un, "nested deeper than 64"),
    BadInput("anonymize_depth_bomb_private", depth_bomb_private, "nested deeper than 64"),
    BadInput("anonymize_depth_just_over_limit", depth_bomb_just_over_limit, "nested deeper than 64"),
    BadInput("anonymize_truncated_inside_sequence", truncated_inside_sequence, "truncated: element (0040,A730)"),
    BadInput("anonymize_sequence_without_delimiter", undefined_sequence_without_delimiter, "no delimiter"),
    BadInput("anonymize_element_length_beyond_file", element_length_beyond_file, "declares 2147483632 bytes"),
    BadInput("anonymize_item_longer_than_sequence", item_longer_than_its_sequence, "sequence item"),
    BadInput("anonymize_non_item_inside_sequence", non_item_inside_sequence, "expected a sequence item"),
    BadInput("anonymize_stray_item_delimiter", stray_item_delimiter, "unexpected item or delimiter tag"),
    BadInput("anonymize_pixel_fragments_without_delimiter", pixel_fragments_without_delimiter, "no sequence delimiter"),
    BadInput("anonymize_corrupt_deflate_stream", corrupt_deflate_stream, "corrupt DICOM file"),
    BadInput("anonymize_meta_element_beyond_file", meta_element_beyond_file, "runs past the end of the file"),
    BadInput("anonymize_dicomdir_only_folder", dicomdir_only_folder, "holds no DICOM files"),
    BadInput("anonymize_output_inside_input", output_inside_input, "must not be the input folder"),
    BadInput("anonymize_preambleless_file_claiming_dicm", preambleless_file_claiming_dicm, "holds no DICOM files"),
    BadInput("anonymize_instance_without_sop_uids", instance_without_sop_uids, "no SOP Class UID"),
    BadInput("dicom_series_mixed_uids", series_mixed_uids, "2 DICOM series"),
    BadInput("dicom_series_slice_of_another_size", series_slice_of_another_size, "cannot read image"),
    BadInput("dicom_series_slice_tilted", series_slice_tilted, "orientation"),
    BadInput("dicom_series_slice_with_short_pixel_data", series_slice_with_short_pixel_data,
             "pixel data holds 64 bytes; the header declares 8x8 pixels x 1 frame(s) x 1 sample(s) of 16 bits (128"),
    BadInput("dicom_file_with_more_frames_than_pixel_data", file_with_more_frames_than_pixel_data,
             "x 1000 frame(s)"),
    BadInput("dicom_file_with_more_samples_than_pixel_data", file_with_more_samples_than_pixel_data,
             "x 3 sample(s) of 16 bits (384 bytes)"),
    BadInput("dicom_file_with_12_bits_allocated", file_with_12_bits_allocated, "bits allocated 12"),
)  # fmt: skip
