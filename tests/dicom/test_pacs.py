"""``segmorph pacs``: a real Orthanc (DICOMweb) started by the tests; retries and credentials against a small
local HTTP server that answers with chosen statuses."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from orthanc import PASSWORD, READER, READER_PASSWORD, USER, Orthanc, running_orthanc
from orthanc import session_orthanc as _orthanc_fixture  # noqa: F401 (the fixture orthanc_server)
from series_helpers import write_series

from helpers import sphere_case
from segmorph.cli.main import main
from segmorph.dicom import dicomweb
from segmorph.dicom.dicomweb import ConnectionSettings, PacsClient, SeriesSummary, check_url, session_from_environment
from segmorph.dicom.pacs import choose_series
from segmorph.errors import SegmorphError
from segmorph.io import read_image

FAST = ["--tries", "2", "--timeout", "10"]


@pytest.fixture
def credentials(monkeypatch) -> None:
    monkeypatch.delenv("SEGMORPH_PACS_TOKEN", raising=False)
    monkeypatch.setenv("SEGMORPH_PACS_USER", USER)
    monkeypatch.setenv("SEGMORPH_PACS_PASSWORD", PASSWORD)


def upload_study(server: Orthanc, folder: Path, seed: int = 0) -> tuple[str, str, Path]:
    """A 24 x 20 x 12 oblique, anisotropic MR series stored with STOW-RS: (study UID, series UID, its folder)."""
    image, _ = sphere_case(seed=seed)
    paths = write_series(image, folder, patient_id="PAT-0042")
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    server.upload(folder)
    return str(header.StudyInstanceUID), str(header.SeriesInstanceUID), folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert PASSWORD not in err and READER_PASSWORD not in err


def stored_series(server: Orthanc, study: str, modality: str) -> list[dict]:
    return [s for s in server.series_of(study) if s["modality"] == modality]


def retrieve(server: Orthanc, study: str, series: str) -> list[pydicom.Dataset]:
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    return DICOMwebClient(server.url, session=session).retrieve_series(study, series)


# --- against Orthanc ------------------------------------------------------------------------------------------


def test_list_shows_studies_and_series_without_credentials(orthanc_server, credentials, tmp_path, capsys):
    study, series, _ = upload_study(orthanc_server, tmp_path / "series")
    code, out, err = run_cli(capsys, "pacs", "list", "--url", orthanc_server.url)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["study", "patient", "date", "series", "description"]
    row = next(line for line in out.splitlines() if line.startswith(study))
    assert row.split()[1:4] == ["PAT-0042", pydicom.dcmread(next((tmp_path / "series").iterdir())).StudyDate, "1"]
    code, out, err = run_cli(capsys, "pacs", "list", "--url", orthanc_server.url, "--study", study)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["series", "modality", "instances", "description"]
    assert out.splitlines()[1].split()[:3] == [series, "MR", "12"]
    assert PASSWORD not in out + err


def test_fetch_writes_the_series_on_its_grid_and_refuses_a_used_folder(orthanc_server, credentials, tmp_path, capsys):
    study, series, folder = upload_study(orthanc_server, tmp_path / "series", seed=1)
    out_dir = tmp_path / "fetched"
    code, _, err = run_cli(capsys, "pacs", "fetch", "--url", orthanc_server.url, "--study", study, "--series",
                           series, "--out", out_dir)  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{k:04d}.dcm" for k in range(1, 13)]
    fetched, source = read_image(out_dir), read_image(folder)
    np.testing.assert_allclose(fetched.affine.matrix, source.affine.matrix, atol=1e-6)
    assert np.array_equal(fetched.numpy(), source.numpy())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    code, _, err = run_cli(capsys, "pacs", "fetch", "--url", orthanc_server.url, "--study", study, "--series",
                           series, "--out", out_dir)  # fmt: skip
    assert_one_error_line(code, err, "not empty")


def test_fetch_anonymize_writes_de_identified_copies_only(orthanc_server, credentials, tmp_path, capsys):
    study, series, folder = upload_study(orthanc_server, tmp_path / "series", seed=2)
    out_dir = tmp_path / "anonymous"
    code, _, err = run_cli(capsys, "pacs", "fetch", "--url", orthanc_server.url, "--study", study, "--series",
                           series, "--out", out_dir, "--anonymize")  # fmt: skip
    assert code == 0, err
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(out_dir.iterdir())]
    assert len(headers) == 12
    assert {str(h.PatientID) for h in headers} != {"PAT-0042"}
    assert {str(h.StudyInstanceUID) for h in headers} != {study}
    assert len({str(h.SeriesInstanceUID) for h in headers}) == 1
    assert str(headers[0].SeriesInstanceUID) != series
    np.testing.assert_allclose(read_image(out_dir).affine.matrix, read_image(folder).affine.matrix, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # identified copies removed


def test_fetch_of_a_missing_series_names_it(orthanc_server, credentials, tmp_path, capsys):
    study, _, _ = upload_study(orthanc_server, tmp_path / "series", seed=3)
    code, _, err = run_cli(capsys, "pacs", "fetch", "--url", orthanc_server.url, "--study", study, "--series",
                           "1.2.3.4.5.6", "--out", tmp_path / "out")  # fmt: skip
    assert_one_error_line(code, err, "series 1.2.3.4.5.6", "not found")
    assert not (tmp_path / "out").exists()


def test_predict_stores_one_seg_referencing_the_source_series(orthanc_server, credentials, trained_run, tmp_path,
                                                              capsys):  # fmt: skip
    from segmorph.dicom.seg import read_segmentation
    from segmorph.segmentation.predict import Predictor

    study, series, folder = upload_study(orthanc_server, tmp_path / "series", seed=4)
    before = orthanc_server.instance_count()
    keep = tmp_path / "keep"
    code, out, err = run_cli(capsys, "pacs", "predict", trained_run, "--url", orthanc_server.url, "--study", study,
                             "--keep", keep, "--anonymize")  # fmt: skip
    assert code == 0, err
    assert PASSWORD not in out + err
    segs = stored_series(orthanc_server, study, "SEG")
    assert len(segs) == 1 and segs[0]["instances"] == 1
    assert orthanc_server.instance_count() == before + 1
    (stored,) = retrieve(orthanc_server, study, segs[0]["uid"])
    assert stored.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert str(stored.PatientID) == "PAT-0042" and stored.StudyInstanceUID == study  # the stored SEG stays identified
    assert segs[0]["uid"] in out and str(stored.SOPInstanceUID) in out
    # the stored SEG decodes to what predicting on the series itself gives, voxel for voxel
    stored_path = tmp_path / "stored.dcm"
    stored.save_as(stored_path, enforce_file_format=True)
    source = read_image(folder)
    expected, _ = Predictor(trained_run).segment(source)
    assert np.array_equal(read_segmentation(stored_path, source).numpy(), expected.numpy().astype(np.int64))
    # the kept copies are de-identified, and the kept SEG refers to the kept (renamed) series
    kept_series = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((keep / "series").iterdir())]
    kept_seg = pydicom.dcmread(keep / "segmentation.dcm")
    assert len(kept_series) == 12 and {str(h.PatientID) for h in kept_series} != {"PAT-0042"}
    assert str(kept_seg.PatientID) != "PAT-0042" and kept_seg.StudyInstanceUID != study
    assert kept_seg.ReferencedSeriesSequence[0].SeriesInstanceUID == kept_series[0].SeriesInstanceUID != series
    # the SEG series now in the study is not an image: asked for, it is refused and nothing more is stored
    code, _, err = run_cli(capsys, "pacs", "predict", trained_run, "--url", orthanc_server.url, "--study", study,
                           "--series", segs[0]["uid"])  # fmt: skip
    assert_one_error_line(code, err, "not an image series", "SEG")
    assert orthanc_server.instance_count() == before + 1


def test_predict_rtstruct_stores_one_structure_set(orthanc_server, credentials, trained_run, tmp_path, capsys):
    study, series, _ = upload_study(orthanc_server, tmp_path / "series", seed=5)
    code, _, err = run_cli(capsys, "pacs", "predict", trained_run, "--url", orthanc_server.url, "--study", study,
                           "--series", series, "--format", "rtstruct")  # fmt: skip
    assert code == 0, err
    structures = stored_series(orthanc_server, study, "RTSTRUCT")
    assert len(structures) == 1 and structures[0]["instances"] == 1
    (stored,) = retrieve(orthanc_server, study, structures[0]["uid"])
    referenced = stored.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert referenced.RTReferencedSeriesSequence[0].SeriesInstanceUID == series


def test_predict_of_a_missing_study_stores_nothing(orthanc_server, credentials, trained_run, tmp_path, capsys):
    before = orthanc_server.instance_count()
    code, _, err = run_cli(capsys, "pacs", "predict", trained_run, "--url", orthanc_server.url, "--study",
                           "1.2.826.0.1.999", *FAST)  # fmt: skip
    assert_one_error_line(code, err, "study 1.2.826.0.1.999 not found")
    assert orthanc_server.instance_count() == before


def test_a_store_the_server_refuses_is_one_line_and_stores_nothing(orthanc_server, trained_run, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    study, _, _ = upload_study(orthanc_server, tmp_path / "series", seed=6)
    before = orthanc_server.instance_count()
    # READER may read, but Orthanc's Lua filter refuses its POST requests (HTTP 403)
    monkeypatch.setenv("SEGMORPH_PACS_USER", READER)
    monkeypatch.setenv("SEGMORPH_PACS_PASSWORD", READER_PASSWORD)
    code, _, err = run_cli(capsys, "pacs", "predict", trained_run, "--url", orthanc_server.url, "--study", study,
                           "--keep", tmp_path / "keep", "--anonymize")  # fmt: skip
    assert_one_error_line(code, err, "refused to store", "403")
    assert orthanc_server.instance_count() == before and stored_series(orthanc_server, study, "SEG") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # no kept folder, no staging folder


def test_wrong_credentials_are_one_line_without_the_password(orthanc_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEGMORPH_PACS_USER", USER)
    monkeypatch.setenv("SEGMORPH_PACS_PASSWORD", "Wrong-Zx81-distinctive")
    code, out, err = run_cli(capsys, "pacs", "list", "--url", orthanc_server.url)
    assert_one_error_line(code, err, "refused the credentials", "401", "SEGMORPH_PACS_PASSWORD")
    assert "Wrong-Zx81-distinctive" not in out + err and out == ""


def test_a_failed_segmentation_stores_nothing(orthanc_server, credentials, trained_run, tmp_path, capsys,
                                              monkeypatch):  # fmt: skip
    from segmorph.segmentation.predict import Predictor

    def fail(self, image):
        raise SegmorphError("expected 2 channels, got 1")

    study, series, _ = upload_study(orthanc_server, tmp_path / "series", seed=7)
    before = orthanc_server.instance_count()
    monkeypatch.setattr(Predictor, "segment", fail)
    code, _, err = run_cli(capsys, "pacs", "predict", trained_run, "--url", orthanc_server.url, "--study", study)
    assert_one_error_line(code, err, f"cannot segment series {series}", "expected 2 channels")
    assert orthanc_server.instance_count() == before


def test_a_server_stopped_before_the_store_is_one_line_and_holds_nothing_new(credentials, trained_run, tmp_path,
                                                                             capsys, monkeypatch):  # fmt: skip
    with running_orthanc(tmp_path / "second") as server:
        study, _, _ = upload_study(server, tmp_path / "series", seed=8)
        before = server.instance_count()
        store = PacsClient.store

        def stop_then_store(self, datasets, study_uid):
            server.stop()  # the series was retrieved and segmented; the server goes away before the store
            return store(self, datasets, study_uid)

        monkeypatch.setattr(PacsClient, "store", stop_then_store)
        code, _, err = run_cli(capsys, "pacs", "predict", trained_run, "--url", server.url, "--study", study, *FAST)
        assert_one_error_line(code, err, "cannot reach the DICOMweb server", "2 tries")
        server.start()  # the same storage: nothing was stored
        assert server.instance_count() == before and stored_series(server, study, "SEG") == []


def test_an_unreachable_server_is_one_line_from_the_command(credentials):
    with HttpStub([]) as stub:
        url = stub.url  # nothing listens there once the stub is closed
    done = subprocess.run([sys.executable, "-m", "segmorph", "pacs", "list", "--url", url, *FAST],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert_one_error_line(done.returncode, done.stderr, "cannot reach the DICOMweb server", "Connection refused")
    assert done.stdout == ""


# --- retries and credentials against a local HTTP stub --------------------------------------------------------


class HttpStub:
    """A local HTTP server answering each request with the next status of ``statuses`` (200 answers ``[]``,
    as a QIDO-RS search that found nothing), recording the requests' Authorization headers."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.authorizations: list[str] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server calls)
                stub.authorizations.append(self.headers.get("Authorization", ""))
                status = stub.statuses.pop(0) if stub.statuses else 500
                body = b"[]" if status == 200 else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def __enter__(self) -> HttpStub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_sleep(monkeypatch) -> Iterator[list[float]]:
    waits: list[float] = []
    monkeypatch.setattr(dicomweb.time, "sleep", waits.append)
    yield waits


def test_5xx_and_429_are_tried_again_with_doubling_waits(no_sleep):
    with HttpStub([503, 429, 200]) as stub:
        client = PacsClient(stub.url, ConnectionSettings(attempts=4, backoff_s=0.5), environ={})
        assert client.studies() == []
    assert len(stub.authorizations) == 3 and no_sleep == [0.5, 1.0]


def test_retries_are_bounded(no_sleep):
    with HttpStub([502] * 10) as stub:
        client = PacsClient(stub.url, ConnectionSettings(attempts=3, backoff_s=0.5), environ={})
        with pytest.raises(SegmorphError, match="HTTP 502"):
            client.studies()
    assert len(stub.authorizations) == 3 and no_sleep == [0.5, 1.0]


@pytest.mark.parametrize("status", [400, 404, 409])
def test_4xx_answers_are_not_tried_again(no_sleep, status):
    with HttpStub([status, 200]) as stub:
        client = PacsClient(stub.url, ConnectionSettings(attempts=4), environ={})
        with pytest.raises(SegmorphError, match=f"HTTP {status}"):
            client.studies()
    assert len(stub.authorizations) == 1 and no_sleep == []


def test_a_token_is_sent_as_bearer_and_never_printed(capsys, monkeypatch):
    token = "tok-Jq49-distinctive-bearer"
    monkeypatch.delenv("SEGMORPH_PACS_USER", raising=False)
    monkeypatch.delenv("SEGMORPH_PACS_PASSWORD", raising=False)
    monkeypatch.setenv("SEGMORPH_PACS_TOKEN", token)
    with HttpStub([401]) as stub:
        code, out, err = run_cli(capsys, "pacs", "list", "--url", stub.url)
    assert stub.authorizations == [f"Bearer {token}"]
    assert_one_error_line(code, err, "refused the credentials")
    assert token not in out + err


def test_credentials_come_from_the_environment_only():
    session = session_from_environment({"SEGMORPH_PACS_USER": "u", "SEGMORPH_PACS_PASSWORD": "p"})
    assert session.auth == ("u", "p") and "Authorization" not in session.headers
    assert session_from_environment({}).auth is None
    with pytest.raises(SegmorphError, match="SEGMORPH_PACS_PASSWORD is not set"):
        session_from_environment({"SEGMORPH_PACS_USER": "u"})
    with pytest.raises(SegmorphError, match="not both"):
        session_from_environment({"SEGMORPH_PACS_TOKEN": "t", "SEGMORPH_PACS_USER": "u", "SEGMORPH_PACS_PASSWORD": "p"})
    with pytest.raises(SegmorphError, match="may not hold credentials") as caught:
        check_url("http://alice:Secret-Pw@127.0.0.1:8042/dicom-web")
    assert "Secret-Pw" not in str(caught.value) and "alice" not in str(caught.value)
    with pytest.raises(SegmorphError, match="expected a DICOMweb URL"):
        check_url("ftp://127.0.0.1/dicom-web")


def test_choose_series_takes_the_only_image_series_and_names_the_choices():
    mr = SeriesSummary("1.1", "MR", 12, "T1")
    seg = SeriesSummary("1.2", "SEG", 1, "segmorph")
    ct = SeriesSummary("1.3", "CT", 40, "")
    assert choose_series([mr, seg], "9") == "1.1"
    assert choose_series([mr, ct], "9", "1.3") == "1.3"
    with pytest.raises(SegmorphError, match=r"holds 2 image series; choose one with --series: 1\.1 \(MR T1\); 1\.3"):
        choose_series([mr, seg, ct], "9")
    with pytest.raises(SegmorphError, match="holds no image series"):
        choose_series([seg], "9")
    with pytest.raises(SegmorphError, match="not an image series"):
        choose_series([mr, seg], "9", "1.2")
    with pytest.raises(SegmorphError, match="series 1.7 not found in study 9"):
        choose_series([mr], "9", "1.7")


def test_anonymize_without_keep_is_refused_before_any_request(capsys, tmp_path):
    code, _, err = run_cli(capsys, "pacs", "predict", tmp_path, "--url", "http://127.0.0.1:9/dicom-web", "--study",
                           "1.2", "--anonymize")  # fmt: skip
    assert_one_error_line(code, err, "--keep")
