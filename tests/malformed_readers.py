"""Malformed-input cases: hostile image files: degenerate geometry, lying gzip streams, memory bombs, odd pixel types, odd paths (classes 2, 3, 6).

Each case is a :class:`malformed.BadInput`; :func:`malformed.corpus` gathers ``CASES``. Every file stays a few
KB: a memory bomb here is a header declaring more than any default voxel budget (``segmorph.readchecks.MAX_VOXELS``)
or more than its file can hold; the real 1 MB bombs run in tests/test_memory_bomb.py.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from helpers import sphere_case, write_keeping_locale
from malformed import BadInput, Prepared, _float_image, _patched_nifti, _scan
from segmorph.geometry import Affine
from segmorph.io import write_image

NAN = float("nan")


# -- small writers ---------------------------------------------------------------------------------


def _mha(path: Path, shape: Sequence[int] = (4, 4, 3), element: str = "MET_FLOAT", **fields: str) -> Path:
    """A raw MetaImage of zeros; ``fields`` override header lines (``Offset="nan 0 0"``)."""
    header = {
        "ObjectType": "Image", "NDims": str(len(shape)), "BinaryData": "True", "BinaryDataByteOrderMSB": "False",
        "CompressedData": "False", "TransformMatrix": " ".join(map(str, np.eye(len(shape), dtype=int).ravel())),
        "Offset": " ".join("0" * len(shape)), "ElementSpacing": " ".join("1" * len(shape)),
        "DimSize": " ".join(map(str, shape)), "ElementType": element,
    }  # fmt: skip
    header.update(fields)
    text = "".join(f"{key} = {value}\n" for key, value in header.items()) + "ElementDataFile = LOCAL\n"
    path.write_bytes(text.encode() + bytes(4 * int(np.prod((4, 4, 3)))))
    return path


def _nrrd(path: Path, sizes: str = "4 4 3", kinds: str = "domain domain domain", **fields: str) -> Path:
    """A raw little-endian float NRRD of 48 zeros; ``fields`` add or override header lines (``space_origin``)."""
    header = {"type": "float", "dimension": str(len(sizes.split())), "space": "left-posterior-superior",
              "sizes": sizes, "space directions": "(1,0,0) (0,1,0) (0,0,1)", "kinds": kinds, "endian": "little",
              "encoding": "raw", "space origin": "(0,0,0)"}  # fmt: skip
    header.update({key.replace("_", " "): value for key, value in fields.items()})
    text = "NRRD0004\n" + "".join(f"{key}: {value}\n" for key, value in header.items()) + "\n"
    path.write_bytes(text.encode() + bytes(4 * 48))
    return path


def _png(path: Path, width: int, height: int, colour_type: int = 2) -> Path:
    """A PNG whose header declares ``width x height`` (RGB by default) with one tiny, short data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    idat = zlib.compress(bytes(1 + 3 * 64))  # part of one row: decoding would fail long after allocating
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _dicom(folder: Path, positions: Sequence[Sequence[float]], pixel_spacing: str | None = None) -> Path:
    """An axial 8x8 DICOM series, one file per slice at the given (x, y, z) positions (mm).

    ``pixel_spacing`` replaces the PixelSpacing value in the written bytes (ITK's writer would set it from
    the image's spacing): at most 18 characters.
    """
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.78"
    for index, position in enumerate(positions):
        slice_ = sitk.GetImageFromArray(np.full((8, 8), 10 * index, np.int16))
        slice_.SetSpacing((0.123456, 0.123456))  # written as an 18-byte PixelSpacing value
        values = {
            "0008|0060": "CT", "0020|000e": uid, "0020|000d": uid + ".0", "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0032": "\\".join(map(str, position)), "0020|0013": str(index + 1), "0018|0050": "1",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{index + 1}",
        }  # fmt: skip
        for tag, value in values.items():
            slice_.SetMetaData(tag, value)
        path = folder / f"slice_{index:03d}.dcm"
        writer.SetFileName(str(path))
        write_keeping_locale(writer, slice_)
        if pixel_spacing is not None:
            _patch_element(path, b"\x28\x00\x30\x00", pixel_spacing.encode())
    return folder


def _patch_element(path: Path, tag: bytes, value: bytes) -> None:
    """Overwrite a data element's value in an implicit-VR little-endian DICOM file, padded with spaces."""
    data = bytearray(path.read_bytes())
    where = data.index(tag) + 4
    length = struct.unpack("<I", data[where : where + 4])[0]
    assert len(value) <= length, (value, length)
    data[where + 4 : where + 4 + length] = value.ljust(length)
    path.write_bytes(bytes(data))


def _info(path: Path, names: str | None = None) -> Prepared:
    return Prepared(["info", str(path)], names or path.name)


def _predict(run: Path | None, tmp: Path, path: Path) -> Prepared:
    out = tmp / "masks"
    return Prepared(["predict", str(run), str(path), "--out", str(out), "--quiet"], path.name, out)


def _baseline(tmp: Path, path: Path) -> Prepared:
    out = tmp / "masks"
    return Prepared(["baseline", str(path), "--out", str(out)], path.name, out)


def _register(tmp: Path, moving: Path) -> Prepared:
    fixed = _scan(tmp / "fixed.nii.gz")
    out = tmp / "reg"
    return Prepared(["register", str(fixed), str(moving), "--out", str(out), "--method", "rigid"], moving.name, out)


def _evaluate(tmp: Path, reference: Path) -> Prepared:
    """``evaluate`` with a good prediction folder and a references folder holding ``reference``."""
    _, label = sphere_case((4, 4, 3), affine=Affine.identity())
    write_image(label, tmp / "pred" / reference.name.replace(".mha", ".nii.gz").replace(".nrrd", ".nii.gz"))
    out = tmp / "scores.csv"
    return Prepared(["evaluate", str(tmp / "pred"), str(reference.parent), "--out", str(out)], reference.name, out)


def _nifti(tmp: Path, name: str, **fields: tuple[str, int, object]) -> Path:
    return _patched_nifti(tmp / name, gz=name.endswith(".gz"), **fields)


# -- degenerate geometry ---------------------------------------------------------------------------

# NIfTI-1 header offsets: pixdim 76, qform_code 252, sform_code 254, quatern_b/c/d 256, qoffset 268, srow 280
NO_SFORM = ("<h", 254, 0)
NO_QFORM = ("<h", 252, 0)


def nifti_nan_sform(tmp: Path, run: Path | None) -> Prepared:
    return _info(_nifti(tmp, "nan_sform.nii.gz", srow=("<4f", 280, (NAN, 0.0, 0.0, 0.0))))


def nifti_inf_sform_offset(tmp: Path, run: Path | None) -> Prepared:
    return _baseline(tmp, _nifti(tmp, "inf_sform.nii", srow=("<f", 292, float("inf"))))


def nifti_singular_sform(tmp: Path, run: Path | None) -> Prepared:
    path = _nifti(tmp, "singular.nii.gz", srow=("<12f", 280, (1.0, 2.0, 3.0, 0.0) * 3), q=NO_QFORM)
    return _predict(run, tmp, path)


def nifti_zero_spacing(tmp: Path, run: Path | None) -> Prepared:
    return _baseline(tmp, _nifti(tmp, "zero_spacing.nii.gz", pixdim=("<3f", 80, (0.0, 1.1, 2.5)), s=NO_SFORM))


def nifti_negative_spacing(tmp: Path, run: Path | None) -> Prepared:
    return _info(_nifti(tmp, "negative_spacing.nii.gz", pixdim=("<3f", 80, (0.8, -1.1, 2.5)), s=NO_SFORM))


def nifti_tiny_spacing(tmp: Path, run: Path | None) -> Prepared:
    return _info(_nifti(tmp, "tiny_spacing.nii.gz", pixdim=("<3f", 80, (1e-30, 1.1, 2.5)), s=NO_SFORM))


def nifti_huge_spacing(tmp: Path, run: Path | None) -> Prepared:
    return _register(tmp, _nifti(tmp, "huge_spacing.nii.gz", pixdim=("<3f", 80, (0.8, 1.1, 1e30)), s=NO_SFORM))


def nifti_nan_spacing(tmp: Path, run: Path | None) -> Prepared:
    return _predict(run, tmp, _nifti(tmp, "nan_spacing.nii.gz", pixdim=("<3f", 80, (NAN, 1.1, 2.5))))


def nifti_nan_origin(tmp: Path, run: Path | None) -> Prepared:
    return _info(_nifti(tmp, "nan_origin.nii.gz", qoffset=("<3f", 268, (NAN, 0.0, 0.0)), s=NO_SFORM))


def nifti_sform_huge_spacing(tmp: Path, run: Path | None) -> Prepared:
    path = _nifti(tmp, "sform_1e30.nii.gz", srow=("<4f", 280, (1e30, 0.0, 0.0, 0.0)), q=NO_QFORM)
    return _info(path)


def qform_sform_disagree_origin(tmp: Path, run: Path | None) -> Prepared:
    return _predict(run, tmp, _nifti(tmp, "two_origins.nii.gz", qoffset=("<f", 268, 50.0)))


def qform_sform_disagree_rotation(tmp: Path, run: Path | None) -> Prepared:
    """A reading command refuses it (``info`` describes the header and warns instead: tests/test_info.py)."""
    return _baseline(tmp, _nifti(tmp, "two_rotations.nii", quatern=("<3f", 256, (0.3, 0.0, 0.0))))


def qform_sform_disagree_flip(tmp: Path, run: Path | None) -> Prepared:
    """pixdim[0] (qfac) flips the qform's third axis; the sform does not follow."""
    return _register(tmp, _nifti(tmp, "qfac_flip.nii.gz", qfac=("<f", 76, -1.0)))


def mha_nan_origin(tmp: Path, run: Path | None) -> Prepared:
    return _info(_mha(tmp / "nan_origin.mha", Offset="nan 0 0"))


def mha_singular_direction(tmp: Path, run: Path | None) -> Prepared:
    return _baseline(tmp, _mha(tmp / "flat_direction.mha", TransformMatrix="1 0 0 1 0 0 0 0 1"))


def mha_zero_spacing(tmp: Path, run: Path | None) -> Prepared:
    return _info(_mha(tmp / "zero_spacing.mha", ElementSpacing="1 0 1"))


def mha_tiny_spacing_evaluate(tmp: Path, run: Path | None) -> Prepared:
    (tmp / "refs").mkdir()
    return _evaluate(tmp, _mha(tmp / "refs" / "case.mha", element="MET_UCHAR", ElementSpacing="1e-30 1 1"))


def nrrd_nan_direction(tmp: Path, run: Path | None) -> Prepared:
    return _info(_nrrd(tmp / "nan_direction.nrrd", space_directions="(nan,0,0) (0,1,0) (0,0,1)"))


def nrrd_skewed_direction(tmp: Path, run: Path | None) -> Prepared:
    return _baseline(tmp, _nrrd(tmp / "skewed.nrrd", space_directions="(1,0,0) (1,1,0) (0,0,1)"))


def nrrd_huge_spacing(tmp: Path, run: Path | None) -> Prepared:
    return _info(_nrrd(tmp / "huge_spacing.nrrd", space_directions="(1e30,0,0) (0,1,0) (0,0,1)"))


# -- DICOM geometry --------------------------------------------------------------------------------

AXIAL = [(0.0, 0.0, float(z)) for z in range(4)]


def dicom_pixel_spacing_zero(tmp: Path, run: Path | None) -> Prepared:
    return _info(_dicom(tmp / "spacing_zero", AXIAL, pixel_spacing="0\\0"))


def dicom_pixel_spacing_nan(tmp: Path, run: Path | None) -> Prepared:
    return _baseline(tmp, _dicom(tmp / "spacing_nan", AXIAL, pixel_spacing="nan\\nan"))


def dicom_pixel_spacing_tiny(tmp: Path, run: Path | None) -> Prepared:
    return _info(_dicom(tmp / "spacing_tiny", AXIAL, pixel_spacing="1e-30\\1e-30"))


def dicom_pixel_spacing_text(tmp: Path, run: Path | None) -> Prepared:
    return _info(_dicom(tmp / "spacing_text", AXIAL, pixel_spacing="wide"))


def dicom_gantry_tilt(tmp: Path, run: Path | None) -> Prepared:
    tilted = [(0.0, 0.5 * z, float(z)) for z in range(5)]  # each slice 0.5 mm further along y: 27 degrees
    return _info(_dicom(tmp / "tilted", tilted))


def dicom_gantry_tilt_small(tmp: Path, run: Path | None) -> Prepared:
    tilted = [(0.0, 0.05 * z, 2.0 * z) for z in range(6)]  # 1.4 degrees, as a CT gantry tilts
    folder = _dicom(tmp / "tilted_ct", tilted)
    return _predict(run, tmp, folder)


# -- lying gzip streams ----------------------------------------------------------------------------


def _lying_trailer(path: Path, isize: int) -> Path:
    _scan(path)
    path.write_bytes(path.read_bytes()[:-4] + struct.pack("<I", isize))
    return path


def gzip_trailer_says_more(tmp: Path, run: Path | None) -> Prepared:
    return _info(_lying_trailer(tmp / "trailer_more.nii.gz", 10**6))


def gzip_trailer_says_less(tmp: Path, run: Path | None) -> Prepared:
    return _predict(run, tmp, _lying_trailer(tmp / "trailer_less.nii.gz", 100))


def gzip_trailer_says_exact_but_short(tmp: Path, run: Path | None) -> Prepared:
    """The trailer claims exactly the declared bytes; the stream stops halfway (and has no real end)."""
    import gzip

    path = _scan(tmp / "short_stream.nii.gz")
    data = gzip.decompress(path.read_bytes())
    short = zlib.compressobj(6, zlib.DEFLATED, 31)
    body = short.compress(data[: len(data) // 2]) + short.flush(zlib.Z_SYNC_FLUSH)
    path.write_bytes(body + struct.pack("<II", zlib.crc32(data), len(data)))
    return _baseline(tmp, path)


# -- memory bombs (declared sizes) -----------------------------------------------------------------


def nifti_1024_cubed(tmp: Path, run: Path | None) -> Prepared:
    """1024^3 uint8 voxels declared in a 1 KB .nii.gz: refused from the file size, before inflating."""
    path = _nifti(tmp, "bomb.nii.gz", dim=("<8h", 40, (3, 1024, 1024, 1024, 1, 1, 1, 1)), type=("<2h", 70, (2, 8)))
    return _info(path)


def nifti_1024_cubed_uncompressed(tmp: Path, run: Path | None) -> Prepared:
    path = _nifti(tmp, "bomb.nii", dim=("<8h", 40, (3, 1024, 1024, 1024, 1, 1, 1, 1)))
    return _predict(run, tmp, path)


def png_30000_squared(tmp: Path, run: Path | None) -> Prepared:
    """A 30000 x 30000 RGB PNG header (2.7e9 values, beyond every default budget) in 200 bytes."""
    return _info(_png(tmp / "bomb.png", 30000, 30000))


def png_bomb_baseline(tmp: Path, run: Path | None) -> Prepared:
    return _baseline(tmp, _png(tmp / "wide.png", 500_000, 5000, colour_type=0))  # under libpng's 1e6 limit


def nrrd_huge_header(tmp: Path, run: Path | None) -> Prepared:
    return _info(_nrrd(tmp / "bomb.nrrd", sizes="4000 4000 4000"))


def mha_data_shorter_than_declared(tmp: Path, run: Path | None) -> Prepared:
    """48 floats declared, 100 bytes of data: MetaIO printed two lines on stderr and failed without words."""
    path = _mha(tmp / "short.mha")
    path.write_bytes(path.read_bytes()[: -4 * 48 + 100])
    return _baseline(tmp, path)


def mhd_detached_data_shorter_than_declared(tmp: Path, run: Path | None) -> Prepared:
    header = _mha(tmp / "detached.mhd").read_bytes().split(b"ElementDataFile")[0]
    (tmp / "detached.mhd").write_bytes(header + b"ElementDataFile = detached.raw\n")
    (tmp / "detached.raw").write_bytes(bytes(100))
    return _info(tmp / "detached.mhd")


def nrrd_data_shorter_than_declared(tmp: Path, run: Path | None) -> Prepared:
    path = _nrrd(tmp / "short.nrrd")
    path.write_bytes(path.read_bytes()[:-100])
    return _info(path)


def _nhdr(path: Path, data_file: str, after: str = "") -> Path:
    """A detached NRRD header of 4x4x3 raw floats whose ``data file`` field is ``data_file`` (``after``: the
    lines after it, a LIST's names)."""
    header = _nrrd(path.with_suffix(".nrrd")).read_bytes().split(b"\n\n")[0].decode()
    path.with_suffix(".nrrd").unlink()
    path.write_text(f"{header}\ndata file: {data_file}\n{after}")
    return path


def nhdr_data_file_fifo(tmp: Path, run: Path | None) -> Prepared:
    """The NRRD reader opened the FIFO and waited for a writer forever, even to read the header."""
    os.mkfifo(tmp / "pipe.raw")
    return _info(_nhdr(tmp / "scan.nhdr", "pipe.raw"))


def nhdr_data_file_device(tmp: Path, run: Path | None) -> Prepared:
    """The NRRD reader read zeros from the device and gave an image of them."""
    return _baseline(tmp, _nhdr(tmp / "scan.nhdr", "/dev/zero"))


def nhdr_data_list_names_a_missing_file(tmp: Path, run: Path | None) -> Prepared:
    for z in range(2):
        (tmp / f"slice_{z}.raw").write_bytes(bytes(4 * 16))
    return _info(_nhdr(tmp / "scan.nhdr", "LIST 2", "slice_0.raw\nslice_1.raw\nslice_2.raw\n"))


def nhdr_data_pattern_names_a_folder(tmp: Path, run: Path | None) -> Prepared:
    for z in range(2):
        (tmp / f"slice_{z}.raw").write_bytes(bytes(4 * 16))
    (tmp / "slice_2.raw").mkdir()
    return _info(_nhdr(tmp / "scan.nhdr", "slice_%d.raw 0 2 1 2"))


def jpeg_truncated(tmp: Path, run: Path | None) -> Prepared:
    """Half a JPEG: libjpeg decoded it with grey rows and printed "Premature end of JPEG file" on stdout."""
    from PIL import Image as Picture

    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Picture.fromarray(pixels).save(tmp / "whole.jpg", quality=90)
    data = (tmp / "whole.jpg").read_bytes()
    (tmp / "half.jpg").write_bytes(data[: len(data) // 2])
    return _baseline(tmp, tmp / "half.jpg")


def bmp_truncated(tmp: Path, run: Path | None) -> Prepared:
    """Half a BMP: ITK's reader filled the missing rows with black and said nothing."""
    from PIL import Image as Picture

    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Picture.fromarray(pixels).save(tmp / "whole.bmp")
    data = (tmp / "whole.bmp").read_bytes()
    (tmp / "half.bmp").write_bytes(data[: len(data) // 2])
    return _info(tmp / "half.bmp")


def mha_huge_header(tmp: Path, run: Path | None) -> Prepared:
    return _baseline(tmp, _mha(tmp / "bomb.mha", shape=(3000, 3000, 3000)))


def mha_huge_vector_header(tmp: Path, run: Path | None) -> Prepared:
    """1000 x 1000 x 1000 voxels of 3 components: the components count towards the budget."""
    return _register(tmp, _mha(tmp / "vectors.mha", shape=(1000, 1000, 1000), ElementNumberOfChannels="3"))


# -- odd paths -------------------------------------------------------------------------------------


def long_file_name(tmp: Path, run: Path | None) -> Prepared:
    return _info(tmp / ("a" * 300 + ".nii.gz"), "a" * 300)


def long_path(tmp: Path, run: Path | None) -> Prepared:
    path = Path(tmp, *["deep" * 50] * 22, "scan.nii.gz")  # over PATH_MAX (4096)
    out = tmp / "masks"
    return Prepared(["baseline", str(path), "--out", str(out)], "scan.nii.gz", out)


def dev_zero(tmp: Path, run: Path | None) -> Prepared:
    return _info(Path("/dev/zero"), "/dev/zero")


def dev_null_link(tmp: Path, run: Path | None) -> Prepared:
    link = tmp / "scan_0000.nii.gz"
    link.symlink_to("/dev/null")
    return _predict(run, tmp, link)


def fifo_scan(tmp: Path, run: Path | None) -> Prepared:
    path = tmp / "pipe.nii.gz"
    os.mkfifo(path)  # opening it for reading would block forever
    return _info(path)


def _no_dev_zero() -> str | None:
    return None if os.path.exists("/dev/zero") else "no /dev/zero on this system"


def _no_fifo() -> str | None:
    return None if hasattr(os, "mkfifo") else "no FIFOs on this system"


# -- values and pixel types ------------------------------------------------------------------------


def _float64_image(path: Path, top: float) -> Path:
    values = np.ones((4, 4, 3))
    values[1, 2, 1] = top
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))  # float64 on disk
    return path


def float64_beyond_float32_info(tmp: Path, run: Path | None) -> Prepared:
    return _info(_float64_image(tmp / "huge_values.nii.gz", 1e300))


def float64_beyond_float32_predict(tmp: Path, run: Path | None) -> Prepared:
    return _predict(run, tmp, _float64_image(tmp / "huge_values.mha", -1e300))


def complex64_nifti(tmp: Path, run: Path | None) -> Prepared:
    path = tmp / "complex.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray((np.ones((3, 4, 4)) + 2j).astype(np.complex64)), str(path))
    return _info(path)


def complex128_nifti(tmp: Path, run: Path | None) -> Prepared:
    path = tmp / "complex128.nii"
    sitk.WriteImage(sitk.GetImageFromArray((np.ones((3, 4, 4)) - 1j).astype(np.complex128)), str(path))
    return _baseline(tmp, path)


def complex_nrrd(tmp: Path, run: Path | None) -> Prepared:
    """A complex NRRD (``kinds: complex``); MetaImage has no complex type (ITK writes it as 2 channels)."""
    path = _nrrd(tmp / "complex.nrrd", sizes="2 4 3 2", kinds="complex domain domain domain",
                 space_directions="none (1,0,0) (0,1,0) (0,0,1)")  # fmt: skip
    return _register(tmp, path)


def uint64_labels(tmp: Path, run: Path | None) -> Prepared:
    (tmp / "refs").mkdir()
    path = tmp / "refs" / "case.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 4, 4), 2**63 + 5, np.uint64)), str(path))
    return _evaluate(tmp, path)


def float_labels_beyond_int64(tmp: Path, run: Path | None) -> Prepared:
    (tmp / "refs").mkdir()
    values = np.zeros((4, 4, 3))
    values[1, 1, 1] = 1e20
    path = _float_image(tmp / "refs" / "case.nrrd", values)
    return _evaluate(tmp, path)


CASES: tuple[BadInput, ...] = (
    BadInput("nifti_nan_sform", nifti_nan_sform, "degenerate geometry: the sform"),
    BadInput("nifti_inf_sform_offset", nifti_inf_sform_offset, "degenerate geometry: the sform"),
    BadInput("nifti_singular_sform", nifti_singular_sform, "sform is singular", needs_model=True),
    BadInput("nifti_zero_spacing", nifti_zero_spacing, "degenerate geometry: spacing (0, 1.1, 2.5)"),
    BadInput("nifti_negative_spacing", nifti_negative_spacing, "degenerate geometry: spacing"),
    BadInput("nifti_tiny_spacing", nifti_tiny_spacing, "degenerate geometry: spacing (1e-30"),
    BadInput("nifti_huge_spacing", nifti_huge_spacing, "degenerate geometry: spacing"),
    BadInput("nifti_nan_spacing", nifti_nan_spacing, "degenerate geometry: spacing (nan", needs_model=True),
    BadInput("nifti_nan_origin", nifti_nan_origin, "degenerate geometry: the qform"),
    BadInput("nifti_sform_huge_spacing", nifti_sform_huge_spacing, "degenerate geometry: spacing (1e+30"),
    BadInput("qform_sform_disagree_origin", qform_sform_disagree_origin, "qform and sform disagree", needs_model=True),
    BadInput("qform_sform_disagree_rotation", qform_sform_disagree_rotation, "qform and sform disagree"),
    BadInput("qform_sform_disagree_flip", qform_sform_disagree_flip, "qform and sform disagree"),
    BadInput("mha_nan_origin", mha_nan_origin, "degenerate geometry: Offset = 'nan 0 0'"),
    BadInput("mha_singular_direction", mha_singular_direction, "degenerate geometry: direction"),
    BadInput("mha_zero_spacing", mha_zero_spacing, "degenerate geometry: spacing"),
    BadInput("mha_tiny_spacing_evaluate", mha_tiny_spacing_evaluate, "degenerate geometry: spacing (1e-30"),
    BadInput("nrrd_nan_direction", nrrd_nan_direction, "cannot read image"),
    BadInput("nrrd_skewed_direction", nrrd_skewed_direction, "degenerate geometry: direction"),
    BadInput("nrrd_huge_spacing", nrrd_huge_spacing, "degenerate geometry: spacing (1e+30"),
    BadInput("dicom_pixel_spacing_zero", dicom_pixel_spacing_zero, "degenerate geometry: spacing (0, 0)"),
    BadInput("dicom_pixel_spacing_nan", dicom_pixel_spacing_nan, "degenerate geometry: spacing (nan, nan)"),
    BadInput("dicom_pixel_spacing_tiny", dicom_pixel_spacing_tiny, "degenerate geometry: spacing (1e-30, 1e-30)"),
    BadInput("dicom_pixel_spacing_text", dicom_pixel_spacing_text, "PixelSpacing 'wide' is not two numbers"),
    BadInput("dicom_gantry_tilt", dicom_gantry_tilt, "gantry tilt"),
    BadInput("dicom_gantry_tilt_small", dicom_gantry_tilt_small, "gantry tilt", needs_model=True),
    BadInput("gzip_trailer_says_more", gzip_trailer_says_more, "corrupt gzip stream"),
    BadInput("gzip_trailer_says_less", gzip_trailer_says_less, "corrupt gzip stream", needs_model=True),
    BadInput("gzip_trailer_says_exact_but_short", gzip_trailer_says_exact_but_short, "corrupt or truncated"),
    BadInput("nifti_1024_cubed", nifti_1024_cubed, "can hold"),
    BadInput("nifti_1024_cubed_uncompressed", nifti_1024_cubed_uncompressed, "file is truncated", needs_model=True),
    BadInput("png_30000_squared", png_30000_squared, "30000x30000 x 3 components (2,700,000,000 values) is too large"),
    BadInput("png_bomb_baseline", png_bomb_baseline, "more than the memory budget"),
    BadInput("nrrd_huge_header", nrrd_huge_header, "declared size 4000x4000x4000"),
    BadInput("mha_huge_header", mha_huge_header, "more than the memory budget"),
    BadInput("jpeg_truncated", jpeg_truncated, "truncated JPEG file: the image data ends without the end-of-image"),
    BadInput(
        "bmp_truncated",
        bmp_truncated,
        "truncated BMP file: 1,563 bytes, its header declares 32x32 pixels of 24 bits ending at byte 3,126",
    ),
    BadInput(
        "mha_data_shorter_than_declared",
        mha_data_shorter_than_declared,
        "MetaImage data holds 100 bytes; the header declares 4x4x3 x 1 channel(s) of 4 bytes (192 bytes)",
    ),
    BadInput(
        "mhd_detached_data_shorter_than_declared",
        mhd_detached_data_shorter_than_declared,
        "MetaImage data holds 100 bytes",
    ),
    BadInput(
        "nrrd_data_shorter_than_declared",
        nrrd_data_shorter_than_declared,
        "cannot read image (fread got only 23 4-sized things, not 48",
    ),
    BadInput(
        "nhdr_data_file_fifo",
        nhdr_data_file_fifo,
        "NRRD data file 'pipe.raw': not a regular file or folder: a FIFO",
        skip_reason=_no_fifo,
    ),
    BadInput(
        "nhdr_data_file_device",
        nhdr_data_file_device,
        "NRRD data file '/dev/zero': not a regular file or folder",
        skip_reason=_no_dev_zero,
    ),
    BadInput(
        "nhdr_data_list_names_a_missing_file",
        nhdr_data_list_names_a_missing_file,
        "NRRD data file 'slice_2.raw': no such file or folder",
    ),  # fmt: skip
    BadInput(
        "nhdr_data_pattern_names_a_folder",
        nhdr_data_pattern_names_a_folder,
        "NRRD data file 'slice_2.raw' is a folder, not a file",
    ),  # fmt: skip
    BadInput("mha_huge_vector_header", mha_huge_vector_header, "x 3 components (3,000,000,000 values)"),
    BadInput("long_file_name", long_file_name, "file name too long"),
    BadInput("long_path", long_path, "file name too long"),
    BadInput("dev_zero", dev_zero, "not a regular file or folder: a character device", skip_reason=_no_dev_zero),
    BadInput("dev_null_link", dev_null_link, "a character device", needs_model=True, skip_reason=_no_dev_zero),
    BadInput("fifo_scan", fifo_scan, "not a regular file or folder: a FIFO", skip_reason=_no_fifo),
    BadInput("float64_beyond_float32_info", float64_beyond_float32_info, "beyond the float32 range"),
    BadInput("float64_beyond_float32_predict", float64_beyond_float32_predict, "beyond the float32", needs_model=True),
    BadInput("complex64_nifti", complex64_nifti, "complex-valued image"),
    BadInput("complex128_nifti", complex128_nifti, "complex-valued image"),
    BadInput("complex_nrrd", complex_nrrd, "complex-valued image"),
    BadInput("uint64_labels", uint64_labels, "beyond the int64 range"),
    BadInput("float_labels_beyond_int64", float_labels_beyond_int64, "beyond the int64 range"),
)
