"""DICOM de-identification (PS3.15 Basic Profile) on pydicom's bundled test files."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, generate_uid

from malformed_dicom import element, item, nested_sequences, sequence, tiny_dicom
from segmorph.cli.main import build_parser
from segmorph.dicom import structure
from segmorph.dicom.anonymize import (
    AnonymizeOptions,
    anonymize_file,
    anonymize_folder,
)
from segmorph.dicom.profile import ACTIONS, PROFILE
from segmorph.errors import SegmorphError

# Bundled with pydicom (no download): private tags, overlays, curves/waveforms, SR and SEG sequences, RT.
PROFILE_FILES = ("CT_small.dcm", "examples_overlay.dcm", "waveform_ecg.dcm", "test-SR.dcm", "liver_1frame.dcm")
DUMMY_DATES = {"", "19000101", "19000101000000"}


def _copy(name: str, folder: Path, as_name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(get_testdata_file(name), folder / (as_name or name)))


def _edited(name: str, folder: Path, as_name: str, **values) -> Path:
    """A copy of a test file with some attributes set (None deletes)."""
    ds = pydicom.dcmread(get_testdata_file(name))
    for keyword, value in values.items():
        if value is not None:
            setattr(ds, keyword, value)
        elif keyword in ds:
            delattr(ds, keyword)
    if "SOPInstanceUID" in values:
        ds.file_meta.MediaStorageSOPInstanceUID = values["SOPInstanceUID"]
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / as_name)
    return folder / as_name


def _elements(ds: Dataset) -> list[DataElement]:
    found: list[DataElement] = []
    ds.walk(lambda _ds, elem: found.append(elem))
    return found


def _strings(value: object) -> set[str]:
    values = value if isinstance(value, MultiValue | list) else [value]
    return {str(v) for v in values if v not in (None, "")}


def _profile_values(ds: Dataset) -> dict:
    values: dict = defaultdict(set)
    for elem in _elements(ds):
        if elem.tag in PROFILE and elem.VR != "SQ":
            values[elem.tag] |= _strings(elem.value)
    return values


def _all_uids(ds: Dataset) -> set[str]:
    found = set().union(*(_strings(e.value) for e in _elements(ds) if e.VR == "UI"))
    return found | _strings(ds.file_meta.get("MediaStorageSOPInstanceUID"))


def _is_curve_or_overlay(group: int) -> bool:
    return group % 2 == 0 and (0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E)


def test_profile_table_holds_the_identifying_attributes() -> None:
    assert len(PROFILE) > 400
    assert set(ACTIONS.values()) == {"X", "Z", "D", "U"}
    expected = {
        "PatientName": "Z", "PatientID": "Z", "PatientBirthDate": "Z", "PatientSex": "Z", "PatientAge": "X",
        "OtherPatientIDs": "X", "OtherPatientIDsSequence": "X", "PatientAddress": "X", "InstitutionName": "X/Z/D",
        "InstitutionAddress": "X", "ReferringPhysicianName": "Z", "OperatorsName": "X/Z/D",
        "PerformingPhysicianName": "X", "StudyDate": "Z", "AccessionNumber": "Z", "StudyID": "Z",
        "DeviceSerialNumber": "X/Z/D", "StudyInstanceUID": "U", "SeriesInstanceUID": "U", "SOPInstanceUID": "U",
        "FrameOfReferenceUID": "U", "MediaStorageSOPInstanceUID": "U", "ReferencedSOPInstanceUID": "U",
        "ReferencedImageSequence": "X/Z/U*", "ContentSequence": "X",
    }  # fmt: skip
    table = {pydicom.datadict.keyword_for_tag(tag): code for tag, code in PROFILE.items()}
    assert {k: table.get(k) for k in expected} == expected


def test_no_profile_value_survives(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    for name in PROFILE_FILES:
        _copy(name, source / "study")
    report = anonymize_folder(source, out)
    assert sorted(p.name for p in (out / "study").iterdir()) == sorted(PROFILE_FILES)  # no temp files left
    assert report.written and not report.skipped
    private_before = 0
    for name in PROFILE_FILES:
        before = pydicom.dcmread(source / "study" / name)
        after = pydicom.dcmread(out / "study" / name)
        original, original_uids = _profile_values(before), _all_uids(before)
        private_before += sum(e.tag.is_private or _is_curve_or_overlay(e.tag.group) for e in _elements(before))
        for elem in _elements(after):
            where = f"{name} {elem.tag} {elem.keyword}"
            assert not elem.tag.is_private and not _is_curve_or_overlay(elem.tag.group), where
            action = ACTIONS.get(elem.tag)
            assert action != "X", where
            if action == "Z":
                assert elem.is_empty, where
            if action == "D" and elem.VR != "SQ":
                assert not _strings(elem.value) & original[elem.tag], where
            if action == "U" and elem.VR == "UI":
                assert not _strings(elem.value) & original_uids, where
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        assert after.SOPInstanceUID != before.SOPInstanceUID
    assert private_before > 0  # the check above had something to catch


def test_removes_the_usual_identifiers(tmp_path: Path) -> None:
    source = _copy("CT_small.dcm", tmp_path / "in")
    before = pydicom.dcmread(source)
    assert before.PatientName and before.PatientID and before.InstitutionName and before.StudyDate
    anonymize_file(source, tmp_path / "out.dcm", AnonymizeOptions())
    after = pydicom.dcmread(tmp_path / "out.dcm")
    assert after.PatientName == "" and after.PatientID == "" and after.PatientBirthDate == ""
    assert after.StudyDate == "" and after.StudyTime == "" and after.AccessionNumber == ""
    assert after.InstitutionName == "ANONYMIZED" and "PatientAge" not in after
    assert after.PatientIdentityRemoved == "YES"
    assert [item.CodeValue for item in after.DeidentificationMethodCodeSequence] == ["113100"]
    assert all(len(value) <= 64 for value in after.DeidentificationMethod)
    assert after.LongitudinalTemporalInformationModified == "REMOVED"
    assert after.preamble == b"\0" * 128


def test_dates_are_emptied_or_dummied_by_default(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    for name in PROFILE_FILES:
        _copy(name, source)
    anonymize_folder(source, out)
    for name in PROFILE_FILES:
        dates = {str(e.value) for e in _elements(pydicom.dcmread(out / name)) if e.VR in ("DA", "DT")}
        assert dates <= DUMMY_DATES, name


def _shifted(value: str, days: int) -> str:
    day = dt.date(int(value[:4]), int(value[4:6]), int(value[6:8])) + dt.timedelta(days=days)
    return day.strftime("%Y%m%d") + value[8:]


@pytest.mark.parametrize("days", [40, -400])
def test_shift_dates_moves_every_date_by_the_same_days(tmp_path: Path, days: int) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    names = ("CT_small.dcm", "waveform_ecg.dcm", "test-SR.dcm")
    for name in names:
        _copy(name, source)
    anonymize_folder(source, out, AnonymizeOptions(shift_dates_days=days))
    checked = 0
    for name in names:
        before, after = pydicom.dcmread(source / name), pydicom.dcmread(out / name)
        for elem in before:
            if elem.VR in ("DA", "DT") and elem.value and elem.keyword != "PatientBirthDate":
                assert after[elem.tag].value == _shifted(elem.value, days), f"{name} {elem.keyword}"
                checked += 1
        assert after.PatientBirthDate == ""
        assert after.get("StudyTime") == before.get("StudyTime")  # times of day are kept
        assert [c.CodeValue for c in after.DeidentificationMethodCodeSequence] == ["113100", "113107"]
        assert after.LongitudinalTemporalInformationModified == "MODIFIED"
    before = pydicom.dcmread(source / "test-SR.dcm").VerifyingObserverSequence[0].VerificationDateTime
    after = pydicom.dcmread(out / "test-SR.dcm").VerifyingObserverSequence[0].VerificationDateTime
    assert after == _shifted(before, days)  # inside a sequence too
    assert checked >= 10


def test_uids_are_consistent_within_a_run(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    first = pydicom.dcmread(_copy("MR_small.dcm", source / "series", "a.dcm"))
    _edited("MR_small.dcm", source / "series", "b.dcm", SOPInstanceUID=generate_uid())
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = first.SOPClassUID, first.SOPInstanceUID
    _edited("CT_small.dcm", source, "ct.dcm", ReferencedImageSequence=[reference])
    anonymize_folder(source, out)
    a, b = pydicom.dcmread(out / "series" / "a.dcm"), pydicom.dcmread(out / "series" / "b.dcm")
    ct = pydicom.dcmread(out / "ct.dcm")
    assert a.StudyInstanceUID == b.StudyInstanceUID != first.StudyInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID and a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert ct.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    for ds in (a, b, ct):
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert UID(ds.SOPInstanceUID).is_valid and ds.SOPInstanceUID.startswith("2.25.")


def test_uid_salt_makes_runs_repeatable_and_runs_differ_without_it(tmp_path: Path) -> None:
    source = _copy("MR_small.dcm", tmp_path / "in")

    def new_uid(out: str, salt: str | None) -> str:
        anonymize_file(source, tmp_path / out, AnonymizeOptions(uid_salt=salt))
        return pydicom.dcmread(tmp_path / out).StudyInstanceUID

    assert new_uid("1.dcm", "secret") == new_uid("2.dcm", "secret") != new_uid("3.dcm", "other")
    assert new_uid("4.dcm", None) != new_uid("5.dcm", None)


@pytest.mark.parametrize(
    ("modality", "burned_in", "warns"),
    [("US", None, True), ("XA", None, True), ("MR", "YES", True), ("MR", None, False), ("US", "NO", False)],
)
def test_burned_in_text_warning(tmp_path: Path, modality: str, burned_in: str | None, warns: bool) -> None:
    source = _edited("MR_small.dcm", tmp_path / "in", "x.dcm", Modality=modality, BurnedInAnnotation=burned_in)
    warnings = anonymize_file(source, tmp_path / "out.dcm", AnonymizeOptions())
    assert bool(warnings) == warns
    assert all("BurnedInAnnotation" in w for w in warnings)


def test_secondary_capture_warns_in_the_folder_report(tmp_path: Path) -> None:
    _copy("SC_rgb_small_odd.dcm", tmp_path / "in" / "sc")
    _copy("CT_small.dcm", tmp_path / "in")
    report = anonymize_folder(tmp_path / "in", tmp_path / "out")
    assert len(report.warnings) == 1 and report.warnings[0].startswith("sc/SC_rgb_small_odd.dcm: secondary capture")


@pytest.mark.parametrize("name", ["CT_small.dcm", "examples_overlay.dcm", "JPEG2000.dcm"])
def test_pixel_data_unchanged_and_output_readable(tmp_path: Path, name: str) -> None:
    source = _copy(name, tmp_path / "in")
    anonymize_file(source, tmp_path / "out.dcm")
    before, after = pydicom.dcmread(source), pydicom.dcmread(tmp_path / "out.dcm")
    assert after.PixelData == before.PixelData
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    if not before.file_meta.TransferSyntaxUID.is_compressed:
        np.testing.assert_array_equal(after.pixel_array, before.pixel_array)


def test_non_dicom_files_and_dicomdir_are_skipped_with_a_note(tmp_path: Path) -> None:
    source = tmp_path / "in"
    _copy("MR_small.dcm", source / "a" / "b")
    _copy("rtstruct.dcm", source)  # no DICM prefix
    shutil.copy(get_testdata_file("DICOMDIR"), source / "DICOMDIR")
    (source / "notes.txt").write_text("not an image")
    report = anonymize_folder(source, tmp_path / "out")
    assert report.written == [tmp_path / "out" / "a" / "b" / "MR_small.dcm"]
    assert sorted(note.split(":")[0] for note in report.skipped) == ["DICOMDIR", "notes.txt", "rtstruct.dcm"]
    assert not (tmp_path / "out" / "notes.txt").exists()


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    source = tmp_path / "in"
    _copy("MR_small.dcm", source)
    bad = source / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).integers(0, 256, 300, np.uint8).tobytes())
    with pytest.raises(SegmorphError, match="corrupt DICOM") as err:
        anonymize_folder(source, tmp_path / "out")
    assert err.value.path == str(bad)


def test_truncated_pixel_data_is_corrupt(tmp_path: Path) -> None:
    source = _copy("MR_truncated.dcm", tmp_path)
    with pytest.raises(SegmorphError, match="truncated") as err:
        anonymize_file(source, tmp_path / "out.dcm")
    assert err.value.path == str(source) and not (tmp_path / "out.dcm").exists()


@pytest.mark.parametrize("case", ["out_is_source", "out_inside_source", "out_is_file", "missing", "empty", "no_dicom"])
def test_refuses_bad_folders(tmp_path: Path, case: str) -> None:
    source = tmp_path / "in"
    if case == "out_is_file":
        _copy("MR_small.dcm", source)
        (tmp_path / "out").write_text("a file")
    out = {"out_is_source": source, "out_inside_source": source / "anon"}.get(case, tmp_path / "out")
    if case in ("out_is_source", "out_inside_source"):
        _copy("MR_small.dcm", source)
    elif case == "empty":
        source.mkdir()
    elif case == "no_dicom":
        source.mkdir()
        (source / "readme.txt").write_text("hello")
    with pytest.raises(SegmorphError) as err:
        anonymize_folder(source, out)
    assert err.value.path in (str(source), str(out))
    assert not (source / "anon").exists()


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["anonymize", *argv])


def test_cli_run_anonymize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    _copy("CT_small.dcm", source)
    _edited("MR_small.dcm", source, "us.dcm", Modality="US")
    (source / "notes.txt").write_text("x")
    args = _parse([str(source), "--out", str(out), "--shift-dates", "-7", "--uid-salt", "s"])
    assert args.handler(args) == 0
    stderr = capsys.readouterr().err
    assert "anonymized 2 files" in stderr and "skipped 1" in stderr and "1 warnings" in stderr
    assert "warning: us.dcm: modality US" in stderr and "note: notes.txt" in stderr
    before, after = pydicom.dcmread(source / "CT_small.dcm"), pydicom.dcmread(out / "CT_small.dcm")
    assert after.StudyDate == _shifted(before.StudyDate, -7)


def test_cli_rejects_a_non_integer_shift(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse([str(tmp_path), "--out", str(tmp_path / "o"), "--shift-dates", "a week"])
    assert exit_info.value.code == 2


# -- names beyond the profile table, unknown elements, renaming, structure limits -------------------------

SECONDARY_REVIEWER, EVALUATOR = (0x0014, 0x0104), (0x0014, 0x2006)  # PN attributes outside the profile table
LANGUAGE_CODES, REGIONS = (0x0008, 0x0006), (0x0008, 0x0063)  # sequences outside the profile table
CREATOR = element((0x0009, 0x0010), "LO", b"SEGMORPH")


def test_person_names_are_replaced_at_every_depth_public_or_private(tmp_path: Path) -> None:
    assert all(pydicom.tag.Tag(t) not in PROFILE for t in (SECONDARY_REVIEWER, EVALUATOR, LANGUAGE_CODES, REGIONS))
    private = sequence(
        (0x0009, 0x1001), item(sequence((0x0009, 0x1002), item(element((0x0009, 0x1003), "PN", b"Doe^Private"))))
    )
    public = sequence(LANGUAGE_CODES, item(sequence(REGIONS, item(element(EVALUATOR, "PN", b"Doe^Nested")))))
    top = element(SECONDARY_REVIEWER, "PN", b"Doe^Top")
    source = tiny_dicom(tmp_path / "in" / "x.dcm", public + CREATOR + private + top)
    anonymize_file(source, tmp_path / "out.dcm")
    raw = (tmp_path / "out.dcm").read_bytes()
    assert b"Doe" not in raw and b"Jane" not in raw
    after = pydicom.dcmread(tmp_path / "out.dcm")
    assert after[SECONDARY_REVIEWER].value == "ANONYMIZED"  # a dummy: the attribute stays for its IOD
    assert after[LANGUAGE_CODES][0][REGIONS][0][EVALUATOR].value == "ANONYMIZED"
    assert not any(e.tag.is_private for e in _elements(after))


def test_person_names_encoded_as_un_are_handled(tmp_path: Path) -> None:
    """Short UN values whose dictionary VR is PN are decoded and replaced; long ones, left as bytes, removed."""
    short = element(SECONDARY_REVIEWER, "UN", b"Doe^Short")
    long = element(EVALUATOR, "UN", b"Doe^Long" + b" " * 0x10000)
    patient = element((0x0010, 0x0010), "UN", b"Doe^Patient")
    source = tiny_dicom(tmp_path / "in" / "x.dcm", short + long + patient)
    source.write_bytes(source.read_bytes().replace(element((0x0010, 0x0010), "PN", b"Doe^Jane"), b""))
    assert pydicom.dcmread(source)[0x00100010].value == "Doe^Patient"
    anonymize_file(source, tmp_path / "out.dcm")
    assert b"Doe" not in (tmp_path / "out.dcm").read_bytes()
    after = pydicom.dcmread(tmp_path / "out.dcm")
    assert after[SECONDARY_REVIEWER].value == "ANONYMIZED" and EVALUATOR not in after
    assert after.PatientName == ""


def test_unknown_public_elements_are_removed(tmp_path: Path) -> None:
    unknown_patient, unknown_other = (0x0010, 0x9999), (0x0018, 0x9999)
    for tag in (unknown_patient, unknown_other):
        with pytest.raises(KeyError):
            pydicom.datadict.get_entry(pydicom.tag.Tag(tag))
    extra = element(unknown_patient, "LO", b"Jane Doe, born 1970") + element(unknown_other, "UN", b"Jane Doe")
    source = tiny_dicom(tmp_path / "in" / "x.dcm", extra)
    anonymize_file(source, tmp_path / "out.dcm")
    after = pydicom.dcmread(tmp_path / "out.dcm")
    assert unknown_patient not in after and unknown_other not in after
    assert b"Jane" not in (tmp_path / "out.dcm").read_bytes()
    assert after.PatientIdentityRemoved == "YES" and after.Modality == "MR"  # known attributes stay


def _series_file(folder: Path, name: str, study: str, series: str, instance: int, number: int) -> None:
    tiny_dicom(folder / name, StudyInstanceUID=study, SeriesInstanceUID=series,
               SOPInstanceUID=f"{series}.{instance}", InstanceNumber=number)  # fmt: skip


def _rename_run(source: Path, out: Path, salt: str) -> list[str]:
    anonymize_folder(source, out, AnonymizeOptions(uid_salt=salt, rename=True))
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_rename_writes_pseudonymous_consistent_paths(tmp_path: Path) -> None:
    source = tmp_path / "Doe_Jane_19700101"
    head, knee = "1.2.826.0.1.3680043.2.1125.5.1", "1.2.826.0.1.3680043.2.1125.5.2"
    for instance, number in enumerate([3, 1, 2]):
        _series_file(source / "Head_Smith", f"IM_Jane_{'abc'[instance]}.dcm", head, head + ".7", instance, number)
    _series_file(source / "Knee_Smith" / "Jane_knee", "Jane_scan.dcm", knee, knee + ".7", 0, 1)
    _series_file(source / "Knee_Smith" / "later", "Doe_other.dcm", knee, knee + ".8", 0, 1)
    paths = _rename_run(source, tmp_path / "out", "salt")
    inputs = [str(p.relative_to(tmp_path)) for p in source.rglob("*.dcm")]
    fragments = {t.lower() for name in inputs for t in re.split(r"[^A-Za-z0-9]+", name) if len(t) >= 3} - {"dcm"}
    assert len(paths) == 5 and {"doe", "jane", "smith", "head", "knee", "19700101"} <= fragments
    assert not [(f, p) for p in paths for f in fragments if f in p.lower()]
    studies: dict[str, set[str]] = defaultdict(set)
    series: dict[str, set[str]] = defaultdict(set)
    names: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        ds = pydicom.dcmread(tmp_path / "out" / path)
        study_folder, series_folder, name = Path(path).parts
        studies[ds.StudyInstanceUID].add(study_folder)
        series[ds.SeriesInstanceUID].add(series_folder)
        names[series_folder].append(name)
        assert re.fullmatch(r"study_[0-9a-f]{12}", study_folder) and re.fullmatch(r"series_[0-9a-f]{12}", series_folder)
    assert len(studies) == 2 and all(len(folders) == 1 for folders in studies.values())
    assert len(series) == 3 and all(len(folders) == 1 for folders in series.values())
    assert len({next(iter(f)) for f in series.values()}) == 3
    assert sorted(sorted(n) for n in names.values()) == [
        ["0001.dcm"],
        ["0001.dcm"],
        ["0001.dcm", "0002.dcm", "0003.dcm"],
    ]
    assert _rename_run(source, tmp_path / "again", "salt") == paths  # repeatable with the salt
    assert set(_rename_run(source, tmp_path / "other", "pepper")).isdisjoint(paths)


def test_rename_numbers_follow_instance_number(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.2.1125.5.3"
    for instance, number in enumerate([3, 1, 2]):
        _series_file(tmp_path / "in", f"f{instance}.dcm", uid, uid + ".1", instance, number)
    paths = _rename_run(tmp_path / "in", tmp_path / "out", "s")
    assert [pydicom.dcmread(tmp_path / "out" / p).InstanceNumber for p in paths] == [1, 2, 3]


def test_cli_rename_and_help_say_what_is_not_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_dicom(tmp_path / "in" / "Doe_Jane.dcm")
    args = _parse([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--rename"])
    assert args.handler(args) == 0
    assert [p.name for p in (tmp_path / "out").rglob("*.dcm")] == ["0001.dcm"]
    help_text = build_parser()._subparsers._group_actions[0].choices["anonymize"].format_help()
    assert "burned into the pixels" in help_text and "--rename" in help_text
    assert f"deeper than {structure.MAX_SEQUENCE_DEPTH} levels" in help_text
    assert f"{structure.MAX_ELEMENTS:,} elements" in help_text


def test_nesting_up_to_the_limit_is_anonymized(tmp_path: Path) -> None:
    assert pydicom.tag.Tag(LANGUAGE_CODES) not in PROFILE
    source = tiny_dicom(tmp_path / "in" / "deep.dcm", nested_sequences(structure.MAX_SEQUENCE_DEPTH, LANGUAGE_CODES))
    anonymize_file(source, tmp_path / "out.dcm")
    ds, depth = pydicom.dcmread(tmp_path / "out.dcm"), 0
    while LANGUAGE_CODES in ds:
        ds, depth = ds[LANGUAGE_CODES][0], depth + 1
    assert depth == structure.MAX_SEQUENCE_DEPTH


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc to size the address-space limit")
def test_depth_bomb_fails_quickly_with_one_line_under_a_memory_limit(tmp_path: Path) -> None:
    """The 44 KB shape that grew to many GB: 3000 nested defined-length sequences, in a child limited to +1 GiB."""
    tiny_dicom(tmp_path / "in" / "bomb.dcm", nested_sequences(3000))
    script = textwrap.dedent("""
        import resource, sys
        from segmorph.cli.main import main
        with open("/proc/self/statm") as handle:
            used = int(handle.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), used + (1 << 30)))
        sys.exit(main(sys.argv[1:]))
    """)
    start = time.monotonic()
    argv = ["anonymize", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300)
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and "bomb.dcm" in lines[0] and "nested deeper than 64 levels" in lines[0]
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - start < 60


def test_element_count_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(structure, "MAX_ELEMENTS", 40)
    items = b"".join(item(element((0x0040, 0xA160), "UT", b"xx")) for _ in range(50))  # 100 elements in all
    source = tiny_dicom(tmp_path / "in" / "wide.dcm", sequence(LANGUAGE_CODES, items))
    with pytest.raises(SegmorphError, match="more than 40 data elements") as err:
        anonymize_file(source, tmp_path / "out.dcm")
    assert err.value.path == str(source) and not (tmp_path / "out.dcm").exists()


def test_deflated_files_are_read_and_inflation_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _copy("image_dfl.dcm", tmp_path / "in")
    anonymize_file(source, tmp_path / "out.dcm")
    assert pydicom.dcmread(tmp_path / "out.dcm").PatientIdentityRemoved == "YES"
    monkeypatch.setattr(structure, "MAX_INFLATED_BYTES", 1000)
    with pytest.raises(SegmorphError, match="inflates beyond 1000 bytes"):
        anonymize_file(source, tmp_path / "out2.dcm")


def test_a_file_without_preamble_beside_good_ones_is_skipped_with_a_note(tmp_path: Path) -> None:
    tiny_dicom(tmp_path / "in" / "good.dcm")
    data = tiny_dicom(tmp_path / "bare.dcm").read_bytes()
    (tmp_path / "in" / "bare.dcm").write_bytes(data[128:])  # DICM at byte 0
    report = anonymize_folder(tmp_path / "in", tmp_path / "out")
    assert [p.name for p in report.written] == ["good.dcm"]
    assert report.skipped == ["bare.dcm: skipped, not a DICOM Part 10 file (no DICM prefix)"]


def test_structure_check_accepts_every_valid_bundled_file() -> None:
    """Every Part 10 file bundled with pydicom that pydicom reads whole passes; the truncated ones are refused."""
    folder = Path(get_testdata_file("CT_small.dcm")).parent
    refused = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.read_bytes()[128:132] == b"DICM"):
        try:
            structure.check_structure(path)
        except SegmorphError:
            refused.append(path.name)
    assert len(refused) < 5 and {"MR_truncated.dcm", "rtplan_truncated.dcm"} <= set(refused), refused
