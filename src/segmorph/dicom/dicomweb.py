"""A DICOMweb client (QIDO-RS search, WADO-RS retrieve, STOW-RS store) on ``dicomweb-client``.

Credentials come from the environment only, never from the command line: ``SEGMORPH_PACS_TOKEN`` (sent as
``Authorization: Bearer``) or ``SEGMORPH_PACS_USER`` with ``SEGMORPH_PACS_PASSWORD`` (HTTP basic
authentication). A URL that carries a user or password is refused. No message this module writes holds a
credential: errors name the server by the URL given, the HTTP status and the step that failed.

Every request has a time-out. A request that meets a connection error, a time-out, a transfer cut short, HTTP 429
or a 5xx answer is tried again a few times with exponential back-off (``ConnectionSettings``); a 4xx answer is
final. A store tried again sends the same SOP Instance UIDs, which a server keeps once. Each failure
becomes one :class:`~segmorph.errors.SegmorphError` line: unreachable server, missing study or series, wrong
credentials (401/403), refused store (STOW-RS 4xx or failed instances in its answer), a series that is not an
image (a SEG, SR, RT structure set...).

Example:
    >>> client = PacsClient("http://127.0.0.1:8042/dicom-web")  # doctest: +SKIP
    >>> [s.uid for s in client.studies()]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from segmorph.errors import SegmorphError

TOKEN_VARIABLE = "SEGMORPH_PACS_TOKEN"
USER_VARIABLE = "SEGMORPH_PACS_USER"
PASSWORD_VARIABLE = "SEGMORPH_PACS_PASSWORD"
CREDENTIAL_HINT = f"check {TOKEN_VARIABLE}, or {USER_VARIABLE} and {PASSWORD_VARIABLE}"
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
# Modalities of series that hold no image: segmentations, reports, RT objects, presentation states, documents...
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTION", "PR", "KO", "DOC", "REG", "FID", "AU",
     "ECG", "HD", "RWV", "PLAN", "RESP", "SMR", "EPS", "M3D", "BDUS"}
)  # fmt: skip
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_T = TypeVar("_T")


@dataclass(frozen=True)
class ConnectionSettings:
    """How to talk to the server.

    Attributes:
        timeout_s: Time-out of each request in seconds (to connect, and between bytes of the answer).
        attempts: Tries per request when the server cannot be reached, times out, or answers 429 or 5xx
            (1 to 10; 4xx answers are never tried again).
        backoff_s: Wait before the second try in seconds; it doubles before each further try.
    """

    timeout_s: float = 30.0
    attempts: int = 4
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise SegmorphError(f"timeout: expected a positive number of seconds, got {self.timeout_s}")
        if not 1 <= self.attempts <= 10:
            raise SegmorphError(f"attempts: expected 1 to 10, got {self.attempts}")
        if not 0 <= self.backoff_s <= 60:
            raise SegmorphError(f"backoff: expected 0 to 60 seconds, got {self.backoff_s}")


@dataclass(frozen=True)
class StudySummary:
    """One study as the server describes it (QIDO-RS); empty strings for what it does not say."""

    uid: str
    patient_id: str
    date: str
    description: str
    series_count: int | None


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a study as the server describes it (QIDO-RS)."""

    uid: str
    modality: str
    instance_count: int | None
    description: str

    @property
    def is_image(self) -> bool:
        """False for the modalities that hold no image (SEG, SR, RTSTRUCT, PR, KO...)."""
        return self.modality.upper() not in NON_IMAGE_MODALITIES


def session_from_environment(environ: Mapping[str, str] | None = None) -> requests.Session:
    """A requests session carrying the credentials of the environment (see the module docstring).

    Raises:
        SegmorphError: Both a token and a user are set, or a user without a password (or the reverse); the
            message names the variables, never their values.
    """
    environ = os.environ if environ is None else environ
    token, user, password = (environ.get(name, "") for name in (TOKEN_VARIABLE, USER_VARIABLE, PASSWORD_VARIABLE))
    session = requests.Session()
    session.trust_env = False  # no credentials or proxies picked up from ~/.netrc or proxy variables
    if token and (user or password):
        raise SegmorphError(f"set either {TOKEN_VARIABLE} or {USER_VARIABLE}/{PASSWORD_VARIABLE}, not both")
    if bool(user) != bool(password):
        missing = PASSWORD_VARIABLE if user else USER_VARIABLE
        raise SegmorphError(f"{missing} is not set ({USER_VARIABLE} and {PASSWORD_VARIABLE} go together)")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = (user, password)
    return session


def check_url(url: str) -> str:
    """``url`` without a trailing slash, refused when it is not http(s) or carries a user or password.

    Raises:
        SegmorphError: Naming the URL without its user and password.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SegmorphError("expected a DICOMweb URL such as http://host:8042/dicom-web", _without_userinfo(url))
    if parts.username is not None or parts.password is not None:
        raise SegmorphError(f"the URL may not hold credentials; set them in the environment ({CREDENTIAL_HINT})",
                            _without_userinfo(url))  # fmt: skip
    del port  # parsed only to refuse a malformed port
    return url.rstrip("/")


def _without_userinfo(url: str) -> str:
    return re.sub(r"(?<=//)[^/@]*@", "", url)


class PacsClient:
    """Search, retrieve and store DICOM instances on one DICOMweb server.

    Args:
        url: The DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc).
        settings: Time-outs and retries.
        environ: Where the credentials are read (default: ``os.environ``).
    """

    def __init__(
        self, url: str, settings: ConnectionSettings = ConnectionSettings(), environ: Mapping[str, str] | None = None
    ) -> None:
        self.url = check_url(url)
        self.settings = settings
        self.session = session_from_environment(environ)
        self.client = DICOMwebClient(self.url, session=self.session, timeout=settings.timeout_s)
        self.client.set_http_retry_params(retry=False)  # retries happen in one place, `_call`

    def studies(self) -> list[StudySummary]:
        """Every study on the server (as many as it answers with)."""
        fields = ["PatientID", "StudyDate", "StudyDescription", "NumberOfStudyRelatedSeries"]
        found = self._call("search for studies", lambda: self.client.search_for_studies(fields=fields))
        return [_study_summary(Dataset.from_json(item)) for item in found]

    def series(self, study_uid: str) -> list[SeriesSummary]:
        """The series of one study.

        Raises:
            SegmorphError: The server knows no such study.
        """
        fields = ["Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances"]
        found = self._call(
            f"search the series of study {study_uid}",
            lambda: self.client.search_for_series(study_instance_uid=study_uid, fields=fields),
            missing=f"study {study_uid} not found on the server",
        )  # fmt: skip
        series = [_series_summary(Dataset.from_json(item)) for item in found]
        if not series:
            raise SegmorphError(f"study {study_uid} not found on the server (no series)", self.url)
        return series

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """The instances of one series (WADO-RS), as pydicom data sets with their file meta information.

        The whole series is received before it is returned, so a broken transfer (tried again as the settings
        say) never leaves part of a series behind.

        Raises:
            SegmorphError: No such series in that study, or an instance that is not an image.
        """
        missing = f"series {series_uid} of study {study_uid} not found on the server"
        instances = self._call(
            f"retrieve series {series_uid}",
            lambda: self.client.retrieve_series(study_instance_uid=study_uid, series_instance_uid=series_uid),
            missing=missing,
        )  # fmt: skip
        if not instances:
            raise SegmorphError(missing, self.url)
        for dataset in instances:
            problem = not_an_image(dataset)
            if problem:
                raise SegmorphError(f"series {series_uid} is not an image series ({problem})", self.url)
        return instances

    def store(self, datasets: Sequence[Dataset], study_uid: str) -> list[str]:
        """Store instances in a study (STOW-RS); returns the SOP Instance UIDs the server accepted.

        Raises:
            SegmorphError: The server refused the store (HTTP 4xx, e.g. 403 or 409) or reported failed
                instances, or accepted fewer instances than were sent.
        """
        response = self._call(
            f"store {len(datasets)} instance(s) in study {study_uid}",
            lambda: self.client.store_instances(datasets, study_instance_uid=study_uid),
            refused=f"the server refused to store {len(datasets)} instance(s) in study {study_uid}",
        )  # fmt: skip
        failed = [str(item.get("ReferencedSOPInstanceUID", "?")) for item in response.get("FailedSOPSequence", [])]
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in response.FailedSOPSequence})
            raise SegmorphError(f"the server refused to store {len(failed)} instance(s) (failure reason "
                                f"{', '.join(reasons)})", self.url)  # fmt: skip
        stored = [str(item.ReferencedSOPInstanceUID) for item in response.get("ReferencedSOPSequence", [])]
        expected = {str(ds.SOPInstanceUID) for ds in datasets}
        if not expected <= set(stored):
            raise SegmorphError(f"the server stored {len(expected & set(stored))} of {len(expected)} instance(s)",
                                self.url)  # fmt: skip
        return stored

    def _call(self, action: str, request: Callable[[], _T], missing: str = "", refused: str = "") -> _T:
        """Run ``request``, trying again after connection errors, time-outs, 429 and 5xx; one error line."""
        attempts = self.settings.attempts
        for attempt in range(1, attempts + 1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # pydicom's remarks on odd attributes of received data
                    return request()
            except requests.HTTPError as err:
                status = err.response.status_code if err.response is not None else 0
                if status not in RETRIED_STATUSES or attempt == attempts:
                    raise self._http_error(action, status, err.response, missing, refused) from None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
                if attempt == attempts:
                    raise SegmorphError(f"cannot reach the DICOMweb server to {action} ({_reason(err)}; "
                                        f"{attempts} tries)", self.url) from None  # fmt: skip
            except requests.RequestException as err:
                raise SegmorphError(f"cannot {action} ({type(err).__name__})", self.url) from None
            except (ValueError, KeyError, TypeError) as err:  # an answer dicomweb-client or pydicom cannot decode
                raise SegmorphError(f"cannot {action}: unexpected answer from the server ({_first_line(err)})",
                                    self.url) from None  # fmt: skip
            time.sleep(self.settings.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _http_error(
        self, action: str, status: int, response: requests.Response | None, missing: str, refused: str
    ) -> SegmorphError:
        words = f"HTTP {status} {response.reason}" if response is not None and response.reason else f"HTTP {status}"
        if status == 401:
            problem = f"the server refused the credentials ({words}); {CREDENTIAL_HINT}"
            if not (self.session.auth or "Authorization" in self.session.headers):
                problem = f"the server asks for credentials ({words}); set {TOKEN_VARIABLE}, or {USER_VARIABLE} " \
                          f"and {PASSWORD_VARIABLE}"  # fmt: skip
        elif refused and 400 <= status < 500:
            problem = f"{refused} ({words})"
        elif status == 403:
            problem = f"the server refused access to {action} ({words}); {CREDENTIAL_HINT}"
        elif status == 404 and missing:
            problem = missing
        else:
            problem = f"cannot {action} ({words})"
        return SegmorphError(problem, self.url)


def not_an_image(dataset: Dataset) -> str:
    """Why ``dataset`` is not an image slice segmorph can read ("" when it is one)."""
    modality = str(dataset.get("Modality", "")).strip().upper()
    if str(dataset.get("SOPClassUID", "")) == SEGMENTATION_STORAGE or modality in NON_IMAGE_MODALITIES:
        return f"modality {modality or '?'}"
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        return "an instance without pixel data"
    return ""


def _study_summary(ds: Dataset) -> StudySummary:
    return StudySummary(
        uid=str(ds.get("StudyInstanceUID", "")), patient_id=str(ds.get("PatientID", "") or ""),
        date=str(ds.get("StudyDate", "") or ""), description=str(ds.get("StudyDescription", "") or ""),
        series_count=_count(ds.get("NumberOfStudyRelatedSeries")),
    )  # fmt: skip


def _series_summary(ds: Dataset) -> SeriesSummary:
    return SeriesSummary(
        uid=str(ds.get("SeriesInstanceUID", "")), modality=str(ds.get("Modality", "") or ""),
        instance_count=_count(ds.get("NumberOfSeriesRelatedInstances")),
        description=str(ds.get("SeriesDescription", "") or ""),
    )  # fmt: skip


def _count(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _reason(err: Exception) -> str:
    """The operating system's words for a connection failure ("Connection refused"), or the error's kind."""
    if isinstance(err, requests.Timeout):
        return "timed out"
    found = re.search(r"\[Errno -?\d+\] ([^'\"\])]+)", str(err))
    return found.group(1).strip() if found else type(err).__name__


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0][:200] if text else "") or type(err).__name__
