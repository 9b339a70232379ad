"""Every page of the stock FireWorks dashboard (`lpad webgui -s`, the real gunicorn server) and every `lpad report`
collection on the real embedded server, with Fireworks in several states and real launches (rlaunch).

The /report/ pages and `lpad report -c wflows` need `$substr` of a date, which mongoeco refuses; our server
translates it (`launchpad.server.translate_command`)."""

from __future__ import annotations

import datetime
import json
import re
import subprocess

import pytest

from autopipec_fw.launchpad.files import ensure_initialized
from tests.fixtures.launchpad import VENV_BIN, EmbeddedDB
from tests.fixtures.webgui import webgui_server

STATES = ("ARCHIVED", "FIZZLED", "DEFUSED", "PAUSED", "WAITING", "READY", "RESERVED", "RUNNING", "COMPLETED")


def _populate(db: EmbeddedDB, tmp_path) -> dict[str, int]:
    """Two workflows: one run by rlaunch (a COMPLETED Firework, a FIZZLED one, a child left WAITING), one READY."""
    from fireworks import Firework, ScriptTask, Workflow

    lp = db.launchpad()
    ensure_initialized(lp)
    ok = Firework([ScriptTask.from_str("echo fine")], name="pg-ok", spec={"_category": "pg"})
    bad = Firework([ScriptTask.from_str("exit 3")], name="pg-bad", spec={"_category": "pg"})
    child = Firework([ScriptTask.from_str("true")], name="pg-child", parents=[ok, bad])
    lp.add_wf(Workflow([ok, bad, child], name="pg-run", metadata={"campaign": "pg-run"}))
    idle = Firework([ScriptTask.from_str("true")], name="pg-idle")
    lp.add_wf(Workflow([idle], name="pg-idle-wf", metadata={"campaign": "pg-idle"}))
    ids = {key: lp.get_fw_ids({"name": f"pg-{key}"})[0] for key in ("ok", "bad", "child", "idle")}
    launch_dir = tmp_path / "launches"
    launch_dir.mkdir()
    for key in ("ok", "bad"):
        r = subprocess.run([str(VENV_BIN / "rlaunch"), "-l", str(db.launchpad_file), "singleshot", "--fw_id",
                            str(ids[key])], cwd=launch_dir, env=db.env(), capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
    states = {fw["name"]: fw["state"] for fw in lp.fireworks.find({}, {"name": 1, "state": 1})}
    assert states == {"pg-ok": "COMPLETED", "pg-bad": "FIZZLED", "pg-child": "WAITING", "pg-idle": "READY"}
    return ids


def _report_counts(text: str) -> dict[str, dict[str, int]]:
    """`lpad report` text -> {period: {state: count, "total": n}}."""
    out: dict[str, dict[str, int]] = {}
    period = None
    for line in text.splitlines():
        m = re.match(r"Stats for time-period (\S+)", line)
        if m:
            period = m.group(1)
            out[period] = {}
            continue
        m = re.match(r"(\w+) : (\d+)$", line.strip())
        if m and period is not None:
            out[period][m.group(1)] = int(m.group(2))
    return out


@pytest.mark.timeout(400)
def test_every_webgui_page_and_lpad_report_on_the_embedded_server(embedded_db: EmbeddedDB, tmp_path) -> None:
    ids = _populate(embedded_db, tmp_path)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")

    # lpad report, each collection: the counts are the real ones
    expected = {"fws": {"COMPLETED": 1, "FIZZLED": 1, "WAITING": 1, "READY": 1, "total": 4},
                "wflows": {"FIZZLED": 1, "READY": 1, "total": 2},
                "launches": {"COMPLETED": 1, "FIZZLED": 1, "total": 2}}
    for coll, want in expected.items():
        r = subprocess.run([str(VENV_BIN / "lpad"), "-l", str(embedded_db.launchpad_file), "report", "-c", coll,
                            "-i", "days", "-n", "2"], cwd=embedded_db.workspace, env=embedded_db.env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"lpad report -c {coll}: {r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr
        counts = _report_counts(r.stdout)
        assert today in counts, f"lpad report -c {coll}: no period {today} in\n{r.stdout}"
        got = {k: v for k, v in counts[today].items() if v}
        assert got == {k: v for k, v in want.items() if v}, f"lpad report -c {coll}:\n{r.stdout}"

    with webgui_server(embedded_db) as gui:
        def page(path: str, *must: str) -> str:
            status, body = gui.get(path)
            assert status == 200, f"GET {path} -> {status}: {body[:1500]}"
            for text in must:
                assert text in body, f"GET {path}: {text!r} missing"
            return body

        page("/", "pg-run", "pg-idle-wf", "pg-ok", "pg-bad")
        page("/?fw_query=" + json.dumps({"name": "pg-ok"}).replace(" ", ""), "pg-ok")
        page(f"/fw/{ids['ok']}", "pg-ok", "COMPLETED", "echo fine")
        page(f"/fw/{ids['bad']}", "pg-bad", "FIZZLED")
        details = json.loads(page(f"/fw/{ids['bad']}/details"))
        assert details["state"] == "FIZZLED" and details["launches"][0]["state"] == "FIZZLED"
        page(f"/wf/{ids['child']}", "pg-run", "pg-ok", "pg-bad", "pg-child")
        graph = json.loads(page(f"/wf/{ids['ok']}/json"))
        assert sorted(n["data"]["name"] for n in graph["nodes"]) == ["pg-bad", "pg-child", "pg-ok"]
        assert sorted((e["data"]["source"], e["data"]["target"]) for e in graph["edges"]) == sorted(
            [(str(ids["ok"]), str(ids["child"])), (str(ids["bad"]), str(ids["child"]))])
        page("/fw/", "pg-ok", "pg-bad", "pg-child", "pg-idle")
        page("/wf/", "pg-run", "pg-idle-wf")
        for state in STATES:
            fw_body = page(f"/fw/{state}/")
            wf_body = page(f"/wf/{state}/")
            for name, st in (("pg-ok", "COMPLETED"), ("pg-bad", "FIZZLED"), ("pg-idle", "READY")):
                assert (name in fw_body) == (st == state), f"/fw/{state}/ and {name}"
            for name, st in (("pg-run", "FIZZLED"), ("pg-idle-wf", "READY")):
                assert (name in wf_body) == (st == state), f"/wf/{state}/ and {name}"
        page("/fw/total/fw_id/ASCENDING/", "pg-ok")
        page("/wf/total/name/DESCENDING/", "pg-run")
        page("/wf/metadata/campaign/pg-run/", "pg-run", "pg-child")  # one match: redirected to its page
        status, _ = gui.get("/wf/metadata/campaign/no-such-campaign/")
        assert status == 404
        page("/dashboard/")
        for path in ("/report/", *(f"/report/{i}/" for i in ("minutes", "hours", "days", "months", "years")),
                     "/report/days/3/"):
            body = page(path, "Stats for time-period")  # the FireWorks and the Workflows report texts
            assert "There are no stats" not in body, path
            assert body.count("Stats for time-period") >= 2, path
        for coll in ("fireworks", "workflows", "launches"):
            status, png = gui.get(f"/reports/{coll}/days/3/fig.png")
            assert status == 200, f"{coll} figure -> {status}: {png[:1000]}"
            assert png.startswith("\ufffdPNG") or png[1:4] == "PNG", f"{coll} figure is not a PNG"
