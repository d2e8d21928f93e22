"""De-identify DICOM files with the Basic Application Level Confidentiality Profile (DICOM PS3.15 Annex E).

Every file under a folder is read with pydicom, cleaned, and written atomically under the output folder at
the same relative path; folder and file names are kept as given unless ``rename`` is set, which writes
``study_<hash>/series_<hash>/<number>.dcm`` instead (hashes of the new, salted UIDs; instances numbered in each
series by InstanceNumber; no table of the original names is written anywhere).

Before pydicom parses a file, :func:`segmorph.dicom.structure.check_structure` walks its bytes without recursion
and refuses it (one error naming the file) when sequences nest deeper than ``MAX_SEQUENCE_DEPTH`` (64) levels,
it holds more than ``MAX_ELEMENTS`` (1,000,000) elements, or its structure is broken (a length beyond the end
of the file, a sequence without its delimiter...).

What happens to each data element, inside sequence items too:

- Attributes of PS3.15 Table E.1-1 get their action: ``X`` remove, ``Z`` empty, ``D`` dummy value (an empty
  value stays empty; a sequence is kept and its items cleaned), ``U`` new UID. Combined codes take the mildest
  action that is valid in every IOD, because Type 1 attributes must keep a value and Type 2 ones must stay present:
  ``X/Z`` -> ``Z``; ``X/D``, ``X/Z/D`` and ``Z/D`` -> ``D``; ``X/Z/U*`` -> keep the sequence and replace the
  UIDs inside it. Attributes not in the table are kept, as the profile allows (dates excepted, below).
- Private elements, curves (groups 50xx), overlays (groups 60xx, whole planes) and group lengths are removed,
  and so is every public element that is not in the DICOM data dictionary (its content is unknown), such as
  unknown elements of the patient group (0010,xxxx).
- Person names beyond the table: every other element whose value representation is PN (known or not, at any
  depth) gets ``D`` (a dummy name). An element encoded as ``UN`` whose dictionary VR is PN, SQ or text and that
  pydicom left undecoded is removed.
- UIDs: each original UID maps to ``2.25.<UUID>``, a name-based UUID (``uuid5``) of the UID in a namespace
  drawn from a secret salt. One run uses one salt, so references between files stay consistent (same study,
  same new StudyInstanceUID) while two runs differ unless they share ``uid_salt``. The file meta header is
  rebuilt, so MediaStorageSOPInstanceUID equals the new SOPInstanceUID; the preamble is zeroed.
- Dates: by default dates follow the profile (``Z`` empty, ``D`` becomes 19000101, ``X`` removed); going
  beyond the table, any other non-empty DA or DT value becomes 19000101 as well, so no real date survives. With
  ``shift_dates_days`` every DA and DT value (except PatientBirthDate, which stays empty) is moved by that many
  days instead, the same in all files, times of day are kept, and the Retain Longitudinal Temporal Information
  with Modified Dates option (113107) is recorded. The shift itself is written nowhere.
- PatientIdentityRemoved, DeidentificationMethod, DeidentificationMethodCodeSequence (113100, and 113107 when
  shifting) and LongitudinalTemporalInformationModified are set.
- Not removed: text burned into the pixels (pixel data are never changed; a warning is returned when
  BurnedInAnnotation is YES, or when it is absent and the modality or SOP class often carries burned-in text:
  ultrasound, secondary capture, angiography...), identifying text in standard free-text attributes outside the
  table (the profile keeps them), and file and folder names unless ``rename`` is set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, get_entry, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from segmorph.dicom.profile import ACTIONS
from segmorph.dicom.structure import check_structure
from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_bytes
from segmorph.outputs import Output, check_outputs

# Modalities and SOP classes whose pixels often carry burned-in text (names, dates).
BURN_IN_MODALITIES = frozenset({"US", "SC", "XA", "RF", "ES", "OT", "XC", "GM", "SM", "DOC"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SC, multi-frame SC (.7.1 - .7.4)
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
NEVER_SHIFTED = frozenset({BaseTag(tag_for_keyword("PatientBirthDate"))})
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y", "IS": "0", "DS": "0"}
_NUMERIC = ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT")
_BINARY = ("OB", "OW", "OF", "OD", "OL", "OV", "UN")
# Dictionary VRs whose value, left undecoded as UN, may hold text (names, dates, nested data sets).
_UNDECODED_REMOVED = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "SQ", "ST", "TM", "UC", "UI", "UR", "UT"}
)


@dataclass(frozen=True)
class AnonymizeOptions:
    """How to de-identify.

    Args:
        shift_dates_days: Shift every date by this many days (may be negative) instead of emptying dates.
        uid_salt: Secret that makes new UIDs repeatable across runs; None draws a fresh one per run.
        rename: Write pseudonymous paths ``study_<hash>/series_<hash>/<number>.dcm`` instead of the input's
            relative paths (which may hold names or dates); repeatable across runs with the same ``uid_salt``.
    """

    shift_dates_days: int | None = None
    uid_salt: str | None = None
    rename: bool = False


@dataclass
class AnonymizeReport:
    """What :func:`anonymize_folder` did: written files, skipped inputs and warnings (with relative paths)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Context:
    shift_days: int | None
    namespace: uuid.UUID

    @classmethod
    def from_options(cls, options: AnonymizeOptions) -> _Context:
        salt = options.uid_salt if options.uid_salt is not None else secrets.token_hex(32)
        namespace = uuid.UUID(bytes=hashlib.sha256(salt.encode("utf-8")).digest()[:16])
        return cls(options.shift_dates_days, namespace)

    def new_uid(self, original: str) -> str:
        """A ``2.25`` UID (the integer of a UUID, PS3.5 B.2) that depends only on the original and the salt."""
        original = str(original).strip("\0 ")
        return f"2.25.{uuid.uuid5(self.namespace, original).int}" if original else original

    def pseudonym(self, uid: str) -> str:
        """12 hex digits that stand for ``uid`` in file names: a hash of its new UID (so salted)."""
        return hashlib.sha256(self.new_uid(uid).encode("ascii")).hexdigest()[:12]


def anonymize_file(source: str | Path, destination: str | Path, options: AnonymizeOptions | None = None) -> list[str]:
    """De-identify one DICOM file and write it atomically.

    UIDs stay consistent across calls only when ``options.uid_salt`` is given; use :func:`anonymize_folder`
    to process a study.

    Returns:
        Warnings about this file (burned-in text the pixels may carry).

    Raises:
        SegmorphError: The source is not a readable DICOM Part 10 file (naming it), or cannot be written.
    """
    source = Path(source)
    ds = _read(source)
    if _is_dicomdir(ds):
        raise SegmorphError("is a DICOMDIR index, not an instance; rebuild it from the anonymized files", source)
    return _anonymize(ds, source, Path(destination), _Context.from_options(options or AnonymizeOptions()))


def anonymize_folder(
    source_dir: str | Path, out_dir: str | Path, options: AnonymizeOptions | None = None
) -> AnonymizeReport:
    """De-identify every DICOM file under ``source_dir`` into ``out_dir``, keeping relative paths.

    Files without the DICOM Part 10 ``DICM`` prefix and DICOMDIR indexes are skipped with a note (rebuild a
    DICOMDIR from the output). All files share one UID salt, so references between them stay consistent.
    Every file is read and checked before the first is written (each is read twice), so a corrupt file
    leaves ``out_dir`` as it was. With ``options.rename`` the outputs get pseudonymous paths (see the module
    docstring) and warnings name those paths rather than the input's.

    Raises:
        SegmorphError: ``source_dir`` is missing or holds no DICOM file; ``out_dir`` is ``source_dir`` or inside
            it; a DICOM file is corrupt or beyond the structure limits (naming it).

    Example:
        >>> report = anonymize_folder("dicom_in", "dicom_anon", AnonymizeOptions(rename=True))  # doctest: +SKIP
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    options = options or AnonymizeOptions()
    files = _list_files(source_dir, out_dir)
    context = _Context.from_options(options)
    report = AnonymizeReport()
    instances: list[tuple[Path, _Identity]] = []
    for path in files:  # read and check every file before writing any: a corrupt one leaves no partial output
        relative = path.relative_to(source_dir)
        if not _has_dicm_prefix(path):
            report.skipped.append(f"{relative}: skipped, not a DICOM Part 10 file (no DICM prefix)")
            continue
        ds = _read(path)
        if _is_dicomdir(ds):
            report.skipped.append(f"{relative}: skipped, a DICOMDIR index (rebuild it from the anonymized files)")
        else:
            _sop_uids(ds, path)  # checked here too, so that such a file stops the run before any output
            instances.append((path, _Identity.of(ds)))
    if options.rename:
        targets = _pseudonymous_paths([identity for _, identity in instances], context)
    else:
        targets = [path.relative_to(source_dir) for path, _ in instances]
    for (path, _), target in zip(instances, targets, strict=True):
        found = _anonymize(_read(path), path, out_dir / target, context)
        report.written.append(out_dir / target)
        shown = target if options.rename else path.relative_to(source_dir)
        report.warnings.extend(f"{shown}: {message}" for message in found)
    if not report.written:
        raise SegmorphError(f"folder holds no DICOM files ({len(report.skipped)} other files skipped)", source_dir)
    return report


@dataclass(frozen=True)
class _Identity:
    """What places an instance in a renamed output: its original study, series and instance UIDs and number."""

    study: str
    series: str
    instance: str
    number: int

    @classmethod
    def of(cls, ds: Dataset) -> _Identity:
        try:
            number = int(str(ds.get("InstanceNumber", "") or 0).strip() or 0)
        except ValueError:
            number = 0
        uids = (
            str(ds.get(keyword, "") or "") for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        )
        return cls(*uids, number)


def _pseudonymous_paths(identities: list[_Identity], context: _Context) -> list[Path]:
    """``study_<hash>/series_<hash>/<number>.dcm`` per instance: hashes of the salted new UIDs, and numbers
    1, 2, ... in each series in the order of InstanceNumber (then of the new SOP Instance UID)."""
    series: dict[tuple[str, str], list[int]] = {}
    for index, identity in enumerate(identities):
        series.setdefault((identity.study, identity.series), []).append(index)
    paths = [Path()] * len(identities)
    for (study, series_uid), members in series.items():
        members.sort(key=lambda i: (identities[i].number, context.new_uid(identities[i].instance)))
        folder = Path(f"study_{context.pseudonym(study)}") / f"series_{context.pseudonym(series_uid)}"
        width = max(4, len(str(len(members))))
        for number, index in enumerate(members, start=1):
            paths[index] = folder / f"{number:0{width}d}.dcm"
    return paths


def _list_files(source_dir: Path, out_dir: Path) -> list[Path]:
    if not source_dir.is_dir():
        raise SegmorphError("no such folder" if not source_dir.exists() else "not a folder", source_dir)
    # the output folder may be neither the input folder nor inside it (nor a file, nor unwritable)
    check_outputs([Output.folder(out_dir)], inputs=[source_dir], outside=[source_dir])
    files = sorted(p for p in source_dir.rglob("*") if p.is_file())
    if not files:
        raise SegmorphError("folder holds no files", source_dir)
    return files


def _has_dicm_prefix(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError as err:
        raise SegmorphError(f"cannot read file ({err.strerror or err})", path) from None
    return len(head) == 132 and head[128:] == b"DICM"


def _is_dicomdir(ds: Dataset) -> bool:
    return str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds


def _anonymize(ds: pydicom.FileDataset, source: Path, destination: Path, context: _Context) -> list[str]:
    warnings = burned_in_warnings(ds)
    meta = _new_file_meta(ds, source, context)
    _clean(ds, context)
    _record_method(ds, context)
    ds.file_meta = meta
    ds.preamble = b"\0" * 128  # a preamble may hold a TIFF header or other free data
    buffer = BytesIO()
    try:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    except (ValueError, TypeError, OverflowError) as err:
        raise SegmorphError(f"cannot encode the anonymized file ({err})", source) from None
    atomic_write_bytes(destination, buffer.getvalue())
    return warnings


def _read(path: Path) -> pydicom.FileDataset:
    """Check the structure (bounded), then parse every element that will be kept, so corruption surfaces here."""
    check_structure(path)
    try:
        with warnings.catch_warnings():  # pydicom warns about oddities it works around; errors are raised below
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            for _ in _kept_elements(ds):
                pass
    except Exception as err:  # pydicom raises many types on corrupt input
        raise SegmorphError(f"corrupt DICOM file ({type(err).__name__}: {err})", path) from err
    shortfall = _pixel_shortfall(ds)
    if shortfall:
        raise SegmorphError(f"corrupt DICOM file ({shortfall})", path)
    return ds


def _pixel_shortfall(ds: Dataset) -> str:
    """A message when uncompressed pixel data hold fewer bytes than the header declares (a truncated file)."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    needed = ("PixelData", "Rows", "Columns", "BitsAllocated")
    if syntax is None or syntax.is_compressed or not all(ds.get(k) not in (None, "") for k in needed):
        return ""
    frames = int(ds.get("NumberOfFrames") or 1)
    bits = ds.Rows * ds.Columns * int(ds.get("SamplesPerPixel") or 1) * frames * ds.BitsAllocated
    expected, found = (bits + 7) // 8, len(ds.PixelData)
    return f"pixel data truncated: {found} of {expected} bytes" if found < expected else ""


def _new_file_meta(ds: Dataset, source: Path, context: _Context) -> FileMetaDataset:
    """A fresh meta header (no source AE titles or private meta) pointing at the new SOP Instance UID."""
    old = getattr(ds, "file_meta", FileMetaDataset())
    sop_class, instance = _sop_uids(ds, source)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = context.new_uid(instance)
    meta.TransferSyntaxUID = old.get("TransferSyntaxUID") or _syntax_from_encoding(ds)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    return meta


def _sop_uids(ds: Dataset, source: Path) -> tuple[str, str]:
    """The SOP Class and SOP Instance UIDs (from the data set, else the meta header); refused when missing."""
    old = getattr(ds, "file_meta", FileMetaDataset())
    instance = ds.get("SOPInstanceUID") or old.get("MediaStorageSOPInstanceUID")
    sop_class = ds.get("SOPClassUID") or old.get("MediaStorageSOPClassUID")
    if not instance or not sop_class:
        raise SegmorphError("corrupt DICOM file (no SOP Class UID or SOP Instance UID)", source)
    return sop_class, instance


def _syntax_from_encoding(ds: Dataset) -> UID:
    implicit, little = getattr(ds, "original_encoding", (False, True))
    if not little:
        return pydicom.uid.ExplicitVRBigEndian
    return pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian


def _kept_elements(ds: Dataset) -> Iterator[tuple[Dataset, DataElement]]:
    """(data set, element) for every element at every depth, parents first, without recursion.

    Elements that :func:`_removed_unread` selects are never decoded (pydicom would guess their meaning), and
    a sequence's items are visited only if the sequence is still in its data set when its turn comes.
    """
    stack = [ds]
    while stack:
        current = stack.pop()
        for tag in list(current.keys()):
            if tag not in current or _removed_unread(tag):
                continue
            elem = current[tag]
            yield current, elem
            if elem.VR == "SQ" and tag in current:
                stack.extend(reversed(list(elem.value)))


def _removed_unread(tag: BaseTag) -> bool:
    """Private elements, group lengths, curves, overlays and public elements unknown to the dictionary."""
    if tag.is_private or tag.element == 0 or _is_curve_or_overlay(tag):
        return True
    try:
        get_entry(tag)
    except KeyError:
        return True
    return False


def _clean(ds: Dataset, context: _Context) -> None:
    """Apply the profile to ``ds`` and every data set in its sequences, in place (see the module docstring)."""
    stack = [ds]
    while stack:
        current = stack.pop()
        for tag in list(current.keys()):  # tags only: removed elements are never decoded
            if _removed_unread(tag):
                del current[tag]
        for elem in list(current):
            _apply(current, elem, _action(elem), context)
            if elem.VR == "SQ" and elem.tag in current:
                stack.extend(elem.value)


def _action(elem: DataElement) -> str | None:
    """The table's action for ``elem``; beyond it, D for dates and person names, X for undecoded text."""
    action = ACTIONS.get(elem.tag)
    if elem.VR == "UN" and dictionary_VR(elem.tag) in _UNDECODED_REMOVED:
        return "X"  # a long value pydicom left as bytes: it cannot be cleaned, so it goes
    if action is None and elem.VR in ("DA", "DT", "PN"):
        return "D"  # no real date or name survives unless dates are shifted
    return action


def _is_curve_or_overlay(tag: BaseTag) -> bool:
    group = tag.group
    return group % 2 == 0 and (0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E)


def _apply(ds: Dataset, elem: DataElement, action: str | None, context: _Context) -> None:
    shifting = context.shift_days is not None
    if shifting and elem.VR in ("DA", "DT") and elem.tag not in NEVER_SHIFTED:
        elem.value = _map_values(elem.value, lambda v: _shift_date(v, elem.VR, context.shift_days))
    elif shifting and elem.VR == "TM" and action is not None:
        pass  # with shifted dates, times of day are kept (Retain Longitudinal ... Modified Dates)
    elif action == "X":
        del ds[elem.tag]
    elif action == "Z":
        elem.value = elem.empty_value
    elif action == "U" and elem.VR == "UI":
        elem.value = _map_values(elem.value, context.new_uid)
    elif action == "D" or (action == "U" and elem.VR not in ("UI", "SQ")):
        _set_dummy(elem)


def _map_values(value: object, function: Callable[[str], str]) -> object:
    if isinstance(value, MultiValue | list | tuple):
        return [function(v) for v in value]
    return function(value) if value not in (None, "") else value


def _set_dummy(elem: DataElement) -> None:
    """A non-empty value valid for the VR; an empty value (nothing to hide) and a sequence's items are kept."""
    if elem.VR == "SQ" or elem.is_empty:
        return
    if elem.VR in _NUMERIC:
        elem.value = 0
    elif elem.VR in _BINARY:
        elem.value = b"\0\0"
    else:
        elem.value = _DUMMY.get(elem.VR, "ANONYMIZED")


def _shift_date(value: str, vr: str, days: int) -> str:
    """Move a DA or DT value by ``days``; keeps the time and offset of a DT. Unparsable or partial -> empty."""
    match = re.fullmatch(r"(\d{8})(.*)", str(value).strip())
    if not match or (vr == "DA" and match.group(2)):
        return ""
    try:
        day = dt.datetime.strptime(match.group(1), "%Y%m%d") + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}{match.group(2)}"


def _record_method(ds: Dataset, context: _Context) -> None:
    from segmorph import __version__

    methods = [f"segmorph {__version__}", "DICOM PS3.15 E.1 Basic Confidentiality Profile"]
    codes = [("113100", "Basic Application Confidentiality Profile")]
    if context.shift_days is not None:
        methods.append("Retain Longitudinal Temporal Info Modified Dates")
        codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = methods
    ds.DeidentificationMethodCodeSequence = Sequence([_code_item(value, meaning) for value, meaning in codes])
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if context.shift_days is not None else "REMOVED"


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def burned_in_warnings(ds: Dataset) -> list[str]:
    """Warnings when the pixels of ``ds`` may show identifying text (segmorph never edits pixels)."""
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        return []
    flag = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    if flag == "YES":
        return ["BurnedInAnnotation is YES: the pixels show text that may identify the patient (pixels unchanged)"]
    modality = str(ds.get("Modality", "")).strip().upper()
    secondary = str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX)
    if not flag and (modality in BURN_IN_MODALITIES or secondary):
        kind = "secondary capture" if secondary else f"modality {modality}"
        return [f"{kind} images often show burned-in text and BurnedInAnnotation is absent: check the pixels"]
    return []
