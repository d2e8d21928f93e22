"""PACS workflows over DICOMweb: list studies and series, fetch a series into a folder, and segment a study's
series with a trained run and store the result back (DICOM-SEG or RT-STRUCT).

:func:`predict_and_store` checks its outputs, finds the series (QIDO-RS), loads the model, retrieves the series
(WADO-RS) into a temporary folder, segments it, writes the result object referencing the source series and
stores it in the same study (STOW-RS). The store is the last step: when anything before it fails (an
unreachable server, a missing study, a series that is not an image, a model that does not fit the scan, a
writer error) nothing is sent to the server. The stored object stays identified (it refers to the source
instances); ``anonymize`` writes de-identified copies of the series and of the result beside it, in the
``keep`` folder, for results that must leave the hospital.

Folders are written whole: into a hidden staging folder beside the target, renamed into place at the end (the
``keep`` folder once the store worked, so a failed run leaves neither a result on the server nor a kept folder).
Credentials, time-outs and retries: :mod:`segmorph.dicom.dicomweb`.

Example:
    >>> result = predict_and_store(PacsPrediction("runs/hippo", "http://127.0.0.1:8042/dicom-web", study_uid))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from segmorph.dicom.dicomweb import ConnectionSettings, PacsClient, SeriesSummary, StudySummary
from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_bytes, read_image
from segmorph.outputs import Output, check_outputs
from segmorph.segmentation.ensemble import AnyPredictor, load_predictor
from segmorph.segmentation.predict import PredictOptions, write_dicom

FORMATS = {"dicom-seg": "segmentation.dcm", "rtstruct": "rtstruct.dcm"}  # format -> file name in a kept folder
SERIES_FOLDER = "series"  # the source series in a kept folder


@dataclass(frozen=True)
class PacsPrediction:
    """What :func:`predict_and_store` does.

    Attributes:
        run: Trained segmentation run folder.
        url: DICOMweb root of the server (credentials from the environment, see :mod:`segmorph.dicom.dicomweb`).
        study: Study Instance UID.
        series: Series Instance UID; None takes the study's only image series.
        format: ``"dicom-seg"`` or ``"rtstruct"``.
        keep: A new folder that receives the series and the result (``series/0001.dcm ...`` and
            ``segmentation.dcm`` or ``rtstruct.dcm``), moved into place once the store worked; None keeps nothing.
        anonymize: The copies in ``keep`` are de-identified (:mod:`segmorph.dicom.anonymize`, one UID salt,
            so the result still refers to the series); requires ``keep``.
        device: Torch device of the model.
        options: Prediction options (mirroring, overlap, checkpoint...).
        settings: Time-outs and retries.
    """

    run: Path
    url: str
    study: str
    series: str | None = None
    format: str = "dicom-seg"
    keep: Path | None = None
    anonymize: bool = False
    device: str = "cpu"
    options: PredictOptions = field(default_factory=PredictOptions)
    settings: ConnectionSettings = field(default_factory=ConnectionSettings)


@dataclass(frozen=True)
class StoredResult:
    """What :func:`predict_and_store` stored.

    Attributes:
        study: Study Instance UID.
        source_series: The segmented series.
        series: Series Instance UID of the stored result.
        instance: SOP Instance UID of the stored result.
        kept: The ``keep`` folder, when one was written.
        warnings: De-identification warnings about the kept copies (burned-in text).
    """

    study: str
    source_series: str
    series: str
    instance: str
    kept: Path | None = None
    warnings: tuple[str, ...] = ()


def list_studies(url: str, settings: ConnectionSettings = ConnectionSettings()) -> list[StudySummary]:
    """Every study on the server (QIDO-RS)."""
    return PacsClient(url, settings).studies()


def list_series(url: str, study: str, settings: ConnectionSettings = ConnectionSettings()) -> list[SeriesSummary]:
    """The series of one study (QIDO-RS); raises :class:`SegmorphError` for an unknown study."""
    return PacsClient(url, settings).series(study)


def fetch_series(
    url: str, study: str, series: str, out: str | Path, anonymize: bool = False,
    settings: ConnectionSettings = ConnectionSettings(),
) -> tuple[list[Path], list[str]]:  # fmt: skip
    """Retrieve one series (WADO-RS) into the new folder ``out``: ``0001.dcm``, ``0002.dcm``... in the order of
    InstanceNumber. The folder appears whole or not at all.

    Args:
        anonymize: Write de-identified copies only (:func:`segmorph.dicom.anonymize.anonymize_folder`); the
            identified files exist only inside the staging folder, which is removed.

    Returns:
        The files written, and de-identification warnings (burned-in text).

    Raises:
        SegmorphError: ``out`` exists and is not an empty folder, or a server error (see :class:`PacsClient`).

    Example:
        >>> files, _ = fetch_series(url, study_uid, series_uid, "scans/t1", anonymize=True)  # doctest: +SKIP
    """
    out = Path(out)
    check_new_folder(out)
    client = PacsClient(url, settings)
    choose_series(client.series(study), study, series, client.url)  # a missing study or series, or not an image
    instances = client.retrieve_series(study, series)
    with staged_folder(out) as staging:
        found = _finish_series(instances, staging, anonymize)
    return [out / path.relative_to(staging) for path in found[0]], found[1]


def predict_and_store(request: PacsPrediction) -> StoredResult:
    """Retrieve a series, segment it with a trained run, store the result in its study (see the module doc).

    Raises:
        SegmorphError: One line for each failure; nothing is stored unless every step before the store worked.
    """
    _check_request(request)
    client = PacsClient(request.url, request.settings)
    series_uid = choose_series(client.series(request.study), request.study, request.series, client.url)
    predictor = load_predictor(request.run, request.device, request.options)  # a bad run fails before the transfer
    codes = None
    if request.format == "dicom-seg":
        from segmorph.dicom.seg import run_segment_codes

        codes = run_segment_codes(request.run)  # a malformed dataset.json too
    with tempfile.TemporaryDirectory(prefix="segmorph-pacs-") as work:
        series_dir = Path(work) / SERIES_FOLDER
        write_instances(client.retrieve_series(request.study, series_uid), series_dir)
        result_path = _segment(predictor, request, codes, series_uid, series_dir, Path(work) / FORMATS[request.format])
        result = _read_result(result_path, request.study)
        with _kept(series_dir, result_path, request.keep, request.anonymize) as warnings:
            client.store([result], request.study)  # the kept folder is moved into place once this worked
    return StoredResult(request.study, series_uid, str(result.SeriesInstanceUID), str(result.SOPInstanceUID),
                        request.keep, tuple(warnings))  # fmt: skip


def choose_series(found: Sequence[SeriesSummary], study: str, series: str | None = None, url: str = "") -> str:
    """The series to segment: ``series`` when the study holds it as an image series, else the study's only
    image series.

    Raises:
        SegmorphError: The series is not in the study or is not an image (SEG, SR...); no ``series`` given and
            the study holds no image series or several (naming them).
    """
    if series is not None:
        match = [s for s in found if s.uid == series]
        if not match:
            raise SegmorphError(f"series {series} not found in study {study}", url or None)
        if not match[0].is_image:
            raise SegmorphError(f"series {series} is not an image series (modality {match[0].modality})", url or None)
        return series
    images = [s for s in found if s.is_image]
    if not images:
        kinds = ", ".join(sorted({s.modality or "?" for s in found}))
        raise SegmorphError(f"study {study} holds no image series (modalities {kinds})", url or None)
    if len(images) > 1:
        listed = "; ".join(f"{s.uid} ({s.modality} {s.description})".replace(" )", ")") for s in images)
        raise SegmorphError(f"study {study} holds {len(images)} image series; choose one with --series: {listed}",
                            url or None)  # fmt: skip
    return images[0].uid


def check_new_folder(folder: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output folder that exists and is not empty, or that is, holds or lies in one of ``inputs``."""
    check_outputs([Output.tree(folder)], inputs=inputs)
    if folder.is_dir() and any(folder.iterdir()):
        raise SegmorphError("output folder exists and is not empty; give a new folder", folder)


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A hidden staging folder beside ``target``, renamed to ``target`` when the block ends without error (an
    existing empty ``target`` is replaced); removed otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as staging:
        folder = Path(staging) / target.name
        folder.mkdir()
        yield folder
        try:
            os.replace(folder, target)
        except OSError as err:
            raise SegmorphError(f"cannot move the finished folder into place ({err.strerror})", target) from None


def write_instances(instances: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write data sets into ``folder`` as ``0001.dcm``... in the order of InstanceNumber (then SOP Instance UID)."""
    ordered = sorted(instances, key=lambda ds: (_instance_number(ds), str(ds.get("SOPInstanceUID", ""))))
    width = max(4, len(str(len(ordered))))
    paths = []
    for number, dataset in enumerate(ordered, start=1):
        path = folder / f"{number:0{width}d}.dcm"
        buffer = BytesIO()
        try:
            pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            raise SegmorphError(f"cannot write a received instance ({str(err).splitlines()[0][:200]})", path) from None
        paths.append(atomic_write_bytes(path, buffer.getvalue()))
    return paths


def _instance_number(dataset: Dataset) -> int:
    try:
        return int(str(dataset.get("InstanceNumber", "") or 0))
    except ValueError:
        return 0


def _finish_series(instances: Sequence[Dataset], folder: Path, anonymize: bool) -> tuple[list[Path], list[str]]:
    """Write the series into ``folder``; with ``anonymize`` through a sibling holding the identified files."""
    if not anonymize:
        return write_instances(instances, folder), []
    from segmorph.dicom.anonymize import anonymize_folder

    identified = folder.parent / f"{folder.name}.identified"
    write_instances(instances, identified)
    report = anonymize_folder(identified, folder)
    return sorted(report.written), list(report.warnings)


def _check_request(request: PacsPrediction) -> None:
    if request.format not in FORMATS:
        raise SegmorphError(f"format: expected one of {', '.join(FORMATS)}, got {request.format!r}")
    if request.anonymize and request.keep is None:
        raise SegmorphError("anonymize writes de-identified copies into the keep folder; give one")
    if not Path(request.run).is_dir():
        raise SegmorphError("no such run folder", request.run)
    if request.keep is not None:
        check_new_folder(Path(request.keep), inputs=[Path(request.run)])


def _segment(
    predictor: AnyPredictor,
    request: PacsPrediction,
    codes: dict | None,
    series_uid: str,
    series_dir: Path,
    out_path: Path,
) -> Path:
    """Segment the series folder and write the result object referring to it (segment ``codes`` for a SEG)."""
    try:
        image = read_image(series_dir)
        mask, _ = predictor.segment(image)
    except SegmorphError as err:  # the temporary folder's name would mean nothing to the user
        raise SegmorphError(f"cannot segment series {series_uid}: {err.problem}", request.run) from None
    run_id = Path(request.run).resolve().name
    return write_dicom(request.format, mask, series_dir, out_path, predictor.plan.labels, run_id, None, codes)


def _read_result(path: Path, study: str) -> Dataset:
    """The written result, checked to belong to the study it will be stored in."""
    result = pydicom.dcmread(path)
    if str(result.get("StudyInstanceUID", "")) != study:
        raise SegmorphError(f"the result belongs to study {result.get('StudyInstanceUID', '?')}, not {study}", path)
    return result


@contextlib.contextmanager
def _kept(series_dir: Path, result_path: Path, keep: Path | None, anonymize: bool) -> Iterator[list[str]]:
    """Stage copies of the series and the result for ``keep`` (de-identified with ``anonymize``), yield the
    de-identification warnings, and move the folder into place when the block ends without error."""
    if keep is None:
        yield []
        return
    with staged_folder(keep) as staging:
        plain = staging.parent / f"{staging.name}.identified" if anonymize else staging
        (plain / SERIES_FOLDER).mkdir(parents=True)
        for path in sorted(series_dir.iterdir()):
            atomic_write_bytes(plain / SERIES_FOLDER / path.name, path.read_bytes())
        atomic_write_bytes(plain / result_path.name, result_path.read_bytes())
        warnings: list[str] = []
        if anonymize:
            from segmorph.dicom.anonymize import anonymize_folder

            warnings = list(anonymize_folder(plain, staging).warnings)
        yield warnings
