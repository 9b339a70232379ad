"""`mlip-auto dashboard` on a recorded campaign (real embedded server, real launches; tests/fixtures/recorded_campaign):
the figures' numbers read back from the DOM equal the campaign's stage records and thresholds. Fast: Flask's test
client. Slow: the dashboard as a real process, opened in headless Chromium (Debian's `chromium`), DOM and
screenshot."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from autopipec_fw.dashboard import create_app, render_campaign
from tests.fixtures.launchpad import EmbeddedDB, free_port
from tests.fixtures.recorded_campaign import BARRIERS, GENERATIONS, STOPS, recorded_campaign

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("timeline", "max-gamma", "labels", "learning-energy", "learning-force", "kmc-steps",
           "simulated-time-chart", "barriers")


class Dom(HTMLParser):
    """Every element as (tag, attributes, id of the enclosing figure svg/p), plus the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str | None]] = []
        self.text: list[str] = []
        self._figure: list[str | None] = [None]
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "svg":
            self._figure.append(a.get("id"))
        self.elements.append((tag, a, self._figure[-1] if tag != "svg" else a.get("id")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and len(self._figure) > 1:
            self._figure.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def ids(self) -> set[str]:
        return {a["id"] for _, a, _ in self.elements if "id" in a}

    def marks(self, figure: str, cls: str, series: str | None = None) -> list[dict[str, str]]:
        return [a for _, a, f in self.elements if f == figure and a.get("class") == cls
                and (series is None or a.get("data-series") == series)]


def _ys(marks: list[dict[str, str]]) -> list[float]:
    return [float(m["data-y"]) for m in marks]


def check_dom(page: str, rc) -> Dom:
    """The figures of the recorded campaign, number by number."""
    dom = Dom(page)
    assert set(FIGURES) <= dom.ids(), set(FIGURES) - dom.ids()
    text = "".join(dom.text)
    assert '<section class="campaign" data-name="recorded" data-state="FIZZLED">' in page
    # stages over time: every launched Firework, coloured by state; the package one failed
    fws = dom.marks("timeline", "fw")
    assert len(fws) == len(rc.fw_ids) and {f["data-state"] for f in fws} == {"COMPLETED", "FIZZLED"}
    assert [f["data-fw-id"] for f in fws if f["data-state"] == "FIZZLED"] == [str(rc.fw_ids["package"])]
    starts = [float(f["data-start"]) for f in fws]
    assert starts == sorted(starts) and starts[0] == 0.0 and all(float(f["data-seconds"]) >= 0 for f in fws)
    # what failed, with its one-line reason and whole path
    assert f"RuntimeError: {rc.failure}" in text
    assert "nothing" in text.split("running now:")[1][:20]
    # max gamma per stop against the thresholds
    assert _ys(dom.marks("max-gamma", "bar")) == [s[0] for s in STOPS]
    limits = {m["data-label"]: float(m["data-y"]) for m in dom.marks("max-gamma", "limit")}
    assert limits == {"stop threshold": rc.campaign.gamma.threshold, "select above": rc.campaign.gamma.select_lower}
    # labels per stop: selected and labelled (the last stop's selection never labelled: iteration cap)
    assert _ys(dom.marks("labels", "bar", "selected")) == [float(s[2]) for s in STOPS]
    assert _ys(dom.marks("labels", "bar", "labelled")) == [2.0, 2.0, 0.0]
    # learning curve per generation, train and test, with the gate's limits
    assert _ys(dom.marks("learning-energy", "point", "test")) == [g[1] for g in GENERATIONS]
    assert _ys(dom.marks("learning-energy", "point", "train")) == [g[3] for g in GENERATIONS]
    assert _ys(dom.marks("learning-force", "point", "test")) == [g[2] for g in GENERATIONS]
    assert _ys(dom.marks("learning-force", "point", "train")) == [g[4] for g in GENERATIONS]
    assert _ys(dom.marks("learning-energy", "limit")) == [rc.campaign.validation.max_energy_rmse]
    assert _ys(dom.marks("learning-force", "limit")) == [rc.campaign.validation.max_force_rmse]
    # KMC steps (against the target) and simulated time per aKMC run
    assert _ys(dom.marks("kmc-steps", "bar")) == [float(s[3]) for s in STOPS]
    assert _ys(dom.marks("kmc-steps", "limit")) == [float(rc.campaign.akmc.kmc_steps)]
    assert _ys(dom.marks("simulated-time-chart", "point")) == [s[4] for s in STOPS]
    # barriers learned vs oracle, once validated
    [pt] = dom.marks("barriers", "point")
    assert (float(pt["data-x"]), float(pt["data-y"])) == (BARRIERS[0]["oracle_barrier"], BARRIERS[0]["learned_barrier"])
    assert "adatom hop" in text and "14.0" in text
    return dom


def test_dashboard_figures_match_the_records(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    lp = embedded_db.launchpad()
    rc = recorded_campaign(lp, tmp_path)
    client = create_app(lambda: lp, refresh=7).test_client()
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="7">' in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained: no CDN
    assert "<script" not in page
    check_dom(page, rc)

    data = json.loads(client.get("/api/campaign").get_data(as_text=True))
    [v] = data
    assert {"timeline", "stops", "generations", "kmc", "validation", "thresholds", "failures", "running"} <= set(v)
    assert [s["max_gamma"] for s in v["stops"]] == [s[0] for s in STOPS]
    assert json.loads(client.get("/api/campaign?name=other").get_data(as_text=True)) == []

    # one campaign folder only: the same campaign; another folder: none
    only = create_app(lambda: lp, campaign_dir=rc.root).test_client()
    assert 'data-name="recorded"' in only.get("/").get_data(as_text=True)
    other = tmp_path / "elsewhere"
    other.mkdir()
    none = create_app(lambda: lp, campaign_dir=other).test_client()
    assert 'id="no-campaigns"' in none.get("/").get_data(as_text=True)


def test_dashboard_basic_auth(tmp_path: Path) -> None:
    import mongomock

    class FakeLP:  # unit test of the auth layer: a LaunchPad with no campaigns
        workflows = mongomock.MongoClient().db.workflows

    app = create_app(lambda: FakeLP(), user="ada", password="s3cret", refresh=0)
    c = app.test_client()
    r = c.get("/")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")

    def auth(u: str, p: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()}

    assert c.get("/", headers=auth("ada", "wrong")).status_code == 401
    assert c.get("/api/campaign", headers=auth("eve", "s3cret")).status_code == 401
    ok = c.get("/", headers=auth("ada", "s3cret"))
    assert ok.status_code == 200 and 'id="no-campaigns"' in ok.get_data(as_text=True)
    assert "http-equiv" not in ok.get_data(as_text=True)  # refresh 0: no reload
    with pytest.raises(ValueError, match="both --user and --password"):
        create_app(lambda: FakeLP(), user="ada")


def test_database_gone_is_a_503_page_that_keeps_reloading() -> None:
    from pymongo.errors import ServerSelectionTimeoutError

    def gone():
        raise ServerSelectionTimeoutError("127.0.0.1:1: [Errno 111] Connection refused")

    c = create_app(gone, refresh=3).test_client()
    page = c.get("/")
    assert page.status_code == 503 and 'http-equiv="refresh" content="5"' in page.get_data(as_text=True)
    assert "ServerSelectionTimeoutError: 127.0.0.1:1: [Errno 111] Connection refused" in page.get_data(as_text=True)
    api = c.get("/api/campaign")
    assert api.status_code == 503 and api.mimetype == "text/plain"


def test_running_firework_is_shown_reaching_now() -> None:
    now = 1000.0
    view = {"name": "c", "state": "RUNNING", "campaign_dir": "/x", "now": now,
            "status": {"iteration": 0, "kmc_steps": 0, "kmc_steps_target": 3, "simulated_time": None,
                       "oracle_calls": 4, "fireworks": {"COMPLETED": 1, "RUNNING": 1}},
            "timeline": [{"fw_id": 1, "name": "initial structures", "state": "COMPLETED", "stage": "initial",
                          "start": 900.0, "end": 910.0},
                         {"fw_id": 2, "name": "fit gen_000", "state": "RUNNING", "stage": "fit", "start": 920.0,
                          "end": None}],
            "running": [{"name": "fit gen_000", "fw_id": 2, "seconds": 80.0}], "failures": [], "stops": [],
            "generations": [{"generation": 0, "test_energy_rmse": 5.0, "train_energy_rmse": 3.0,
                             "test_force_rmse": 90.0, "train_force_rmse": 80.0}],
            "kmc": [], "trajectory": [], "validation": None,
            "thresholds": {"max_energy_rmse": 1000.0, "max_force_rmse": 100.0}}
    page = render_campaign(view)
    dom = Dom(page)
    running = [a for a in dom.marks("timeline", "fw") if a["data-state"] == "RUNNING"]
    assert len(running) == 1 and float(running[0]["data-seconds"]) == 80.0 and float(running[0]["data-start"]) == 20.0
    assert '<span class="run" data-fw-id="2">fit gen_000 (80 s)</span>' in page
    assert 'id="barriers" class="empty">not validated yet' in page
    # a gate limit far above the data is a note, not a line that flattens the curve; one near it is a line
    assert _ys(dom.marks("learning-energy", "point")) == [5.0, 3.0]
    assert dom.marks("learning-energy", "limit") == []
    assert _ys(dom.marks("learning-energy", "limit off-scale")) == [1000.0]
    assert "gate 1e+03 (above the scale)" in page
    assert _ys(dom.marks("learning-force", "limit")) == [100.0]


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    from autopipec_fw.launchpad.files import write_launchpad_file

    lp_file = write_launchpad_file(tmp_path, host="127.0.0.1", port=free_port())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = subprocess.run([str(BIN / "mlip-auto"), "dashboard", "--launchpad", str(lp_file), "--port", str(port)],
                           cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                           timeout=60, check=False)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert f"127.0.0.1:{port}" in r.stderr and "Address already in use" in r.stderr and "--port N" in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dashboard_in_headless_chromium(embedded_db: EmbeddedDB, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y --no-install-recommends chromium "
                    "(Debian package 'chromium'; scripts/setup.sh --tests installs it)")
    rc = recorded_campaign(embedded_db.launchpad(), tmp_path)
    port = free_port()
    env = dict(embedded_db.env(), PYTHONPATH=str(ROOT))
    log_file = tmp_path / "dashboard.log"
    with open(log_file, "wb") as out:
        proc = subprocess.Popen([str(BIN / "mlip-auto"), "dashboard", "--port", str(port), "--refresh", "5"],
                                cwd=embedded_db.workspace, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "api/campaign", timeout=5) as resp:
                    assert resp.status == 200
                break
            except (OSError, urllib.error.URLError):
                assert proc.poll() is None, log_file.read_text()
                assert time.monotonic() < deadline, f"dashboard not answering: {log_file.read_text()}"
                time.sleep(0.3)
        argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1300,1800"]
        dom = subprocess.run([*argv, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False)
        assert dom.returncode == 0, dom.stderr[-2000:]
        check_dom(dom.stdout, rc)
        shot = tmp_path / "dashboard.png"
        r = subprocess.run([*argv, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120,
                           check=False)
        assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        print(f"screenshot: {shot}")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)
    assert proc.returncode == 0, log_file.read_text()  # SIGTERM ends it cleanly
    assert "Traceback" not in log_file.read_text()
