"""Open a segmorph HTML report in headless Chromium and check it over the DevTools protocol (CDP).

Used by tests/test_report.py (a synthetic run) and tests/test_integration_hippocampus.py (a real one).
Chromium is Debian's ``chromium`` package; without it (or without ``websocket-client``) the tests skip,
unless ``SEGMORPH_REQUIRE_CHROMIUM=1`` (set by ``.ci/run``), when they fail.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


def chromium() -> str:
    """Chromium's path and the websocket client, or skip (fail when SEGMORPH_REQUIRE_CHROMIUM=1)."""
    required = os.environ.get("SEGMORPH_REQUIRE_CHROMIUM") == "1"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import websocket  # noqa: F401
    except ImportError:
        browser = None
    if browser is None:
        if required:
            pytest.fail("SEGMORPH_REQUIRE_CHROMIUM=1 but chromium or websocket-client is not installed")
        pytest.skip("chromium or websocket-client is not installed")
    return browser


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket; keeps every event it sees."""

    def __init__(self, url: str) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.events: list[dict] = []
        self.last_id = 0

    def call(self, method: str, **params) -> dict:
        self.last_id += 1
        self.socket.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.last_id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.events:
                if message.get("method") == event:
                    return message
            self.events.append(json.loads(self.socket.recv()))
        raise AssertionError(f"no {event} within {timeout} s")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def errors(self) -> list[dict]:
        """Exceptions, console.error calls and error log entries seen so far."""
        bad = []
        for message in self.events:
            method, params = message.get("method"), message.get("params", {})
            if (
                method == "Runtime.exceptionThrown"
                or (method == "Runtime.consoleAPICalled" and params.get("type") == "error")
                or (method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error")
            ):
                bad.append(message)
        return bad


def _start_browser(browser: str, profile: Path) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-default-apps", "--disable-sync", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = port_file.read_text().splitlines() if port_file.exists() else []
        if lines and lines[0].strip().isdigit():
            return process, int(lines[0])
        assert process.poll() is None, f"chromium exited with {process.returncode}"
        time.sleep(0.1)
    raise AssertionError("chromium wrote no DevToolsActivePort within 60 s")


def _stop_browser(process: subprocess.Popen) -> None:
    """Stop the browser we started and its helper processes (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _page_socket(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
        targets = json.loads(response.read())
    return next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")


IMAGES_OK = """Promise.all(Array.from(document.images).map(i => i.decode().then(() => true, () => false)))
  .then(decoded => Array.from(document.images).map((i, n) => [decoded[n] && i.complete && i.naturalWidth > 0,
                                                              i.alt]))"""
MOVE_SLIDER = """(() => {
  const viewer = document.querySelector('.viewer[data-slices]');
  const slider = viewer.querySelector('input[type=range]');
  const picture = viewer.querySelector('img[data-series]');
  const number = viewer.querySelector('.slice-number');
  const before = [picture.src, number.textContent];
  slider.value = String(slider.value === '0' ? slider.max : 0);
  slider.dispatchEvent(new Event('input', {bubbles: true}));
  return {before: before, after: [picture.src, number.textContent], sliders: document.querySelectorAll(
    'input[type=range]').length};
})()"""


def check_report_in_chromium(html: Path, screenshot: Path) -> dict:
    """Load ``html``; assert every image decodes, the first slice slider changes the picture and the slice
    number, and nothing was logged as an error; save a screenshot (also to ``$SEGMORPH_REPORT_SCREENSHOT``).

    Returns:
        ``{"images": count, "sliders": count}``.
    """
    browser = chromium()
    process, port = _start_browser(browser, screenshot.parent / "chromium-profile")
    try:
        tools = DevTools(_page_socket(port))
        for domain in ("Runtime", "Log", "Page"):
            tools.call(f"{domain}.enable")
        tools.call("Emulation.setDeviceMetricsOverride", width=1400, height=1800, deviceScaleFactor=1, mobile=False)
        tools.call("Page.navigate", url=html.resolve().as_uri())
        tools.wait_for("Page.loadEventFired")
        images = tools.evaluate(IMAGES_OK)
        assert len(images) >= 5 and all(ok for ok, _ in images), images
        moved = tools.evaluate(MOVE_SLIDER)
        assert moved["after"][0] != moved["before"][0], "the slider did not change the slice picture"
        assert moved["after"][1] != moved["before"][1], "the slider did not change the slice number"
        assert all(ok for ok, _ in tools.evaluate(IMAGES_OK))
        shot = base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"])
        assert shot.startswith(b"\x89PNG")
        screenshot.write_bytes(shot)
        target = os.environ.get("SEGMORPH_REPORT_SCREENSHOT")
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(screenshot, target)
        assert tools.errors() == []
        return {"images": len(images), "sliders": moved["sliders"]}
    finally:
        _stop_browser(process)
