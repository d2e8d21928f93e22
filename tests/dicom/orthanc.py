"""A real Orthanc PACS for the tests (Debian ``orthanc`` with the ``orthanc-dicomweb`` plugin).

:func:`running_orthanc` writes an Orthanc configuration into a temporary folder (HTTP on a free port of
127.0.0.1, no DICOM listener, storage and index in the folder, the DICOMweb plugin at ``/dicom-web/``,
authentication with two registered users, no remote access) and starts ``/usr/sbin/Orthanc`` with it,
waits until ``/system`` answers and stops it at the end. A Lua ``IncomingHttpRequestFilter`` lets the user
``READER`` read but refuses its POST requests (HTTP 403): a store refused by the server.

Without Orthanc the tests skip, unless ``SEGMORPH_REQUIRE_ORTHANC=1`` (set by ``.ci/run``), when they fail.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# distinctive passwords, so that a test can look for them in everything a command printed
USER, PASSWORD = "segmorph", "Pw-Q7f3c-distinctive-91"
READER, READER_PASSWORD = "reader", "Rd-K2b8x-distinctive-44"
REFUSE_READER_POSTS = f"""
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if method == 'POST' and username == '{READER}' then
    return false
  end
  return true
end
"""


def require_orthanc() -> None:
    """Skip the test when Orthanc or its DICOMweb plugin is missing (fail when SEGMORPH_REQUIRE_ORTHANC=1)."""
    missing = [str(p) for p in (ORTHANC, DICOMWEB_PLUGIN) if not p.exists()]
    if missing:
        if os.environ.get("SEGMORPH_REQUIRE_ORTHANC") == "1":
            pytest.fail(f"SEGMORPH_REQUIRE_ORTHANC=1 but {', '.join(missing)} is missing (apt-get install orthanc "
                        "orthanc-dicomweb)")  # fmt: skip
        pytest.skip(f"Orthanc is not installed ({', '.join(missing)} missing)")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Orthanc:
    """One Orthanc process; :meth:`start` and :meth:`stop` may be called again (same port and storage)."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The DICOMweb root."""
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def configure(self, lua: str = REFUSE_READER_POSTS) -> None:
        """Write the configuration (and the Lua filter) into ``root``."""
        (self.root / "filter.lua").write_text(lua)
        config = {
            "Name": "segmorph-test", "HttpPort": self.port, "DicomServerEnabled": False, "DicomPort": free_port(),
            "StorageDirectory": str(self.root / "storage"), "IndexDirectory": str(self.root / "index"),
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD, READER: READER_PASSWORD},
            "RemoteAccessAllowed": False, "LuaScripts": [str(self.root / "filter.lua")],
        }  # fmt: skip
        (self.root / "orthanc.json").write_text(json.dumps(config, indent=2))

    def start(self, timeout_s: float = 60.0) -> None:
        """Start Orthanc and wait until ``/system`` answers."""
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen([str(ORTHANC), str(self.root / "orthanc.json")], stdout=log, stderr=log,
                                        cwd=self.root)  # fmt: skip
        self.process.log = log  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError):
                self.rest("/system")
                return
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"Orthanc did not start on port {self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after 20 s) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(20)
        self.process.log.close()  # type: ignore[attr-defined]
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        path = self.root / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def rest(self, path: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
        """One request to Orthanc's own REST API (or the DICOMweb root) as ``USER``; the decoded JSON answer."""
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                         headers={"Authorization": f"Basic {token}", **(headers or {})})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:
            payload = answer.read()
        return json.loads(payload) if payload else None

    def series_of(self, study_uid: str) -> list[dict]:
        """The DICOMweb (QIDO-RS) series of a study: ``[{"uid", "modality", "instances"}]``; [] when unknown."""
        try:
            found = self.rest(f"/dicom-web/studies/{study_uid}/series?includefield=NumberOfSeriesRelatedInstances")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return []
            raise
        return [{"uid": item["0020000E"]["Value"][0], "modality": item.get("00080060", {}).get("Value", [""])[0],
                 "instances": int(item.get("00201209", {}).get("Value", [0])[0])} for item in found or []]  # fmt: skip

    def instance_count(self) -> int:
        """All instances stored, in every study."""
        return int(self.rest("/statistics")["CountInstances"])

    def upload(self, folder: Path) -> None:
        """Store every file of ``folder`` with STOW-RS (dicomweb-client itself, not segmorph's client)."""
        session = requests.Session()
        session.auth = (USER, PASSWORD)
        client = DICOMwebClient(self.url, session=session)
        client.store_instances([pydicom.dcmread(path) for path in sorted(folder.iterdir())])


@contextlib.contextmanager
def running_orthanc(root: Path, lua: str = REFUSE_READER_POSTS) -> Iterator[Orthanc]:
    """An Orthanc started in ``root`` (see the module docstring), stopped when the block ends."""
    require_orthanc()
    root.mkdir(parents=True, exist_ok=True)
    server = Orthanc(root)
    server.configure(lua)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", name="orthanc_server")
def session_orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    """``orthanc_server``: one Orthanc for the session's PACS tests (import this function into a test module)."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
