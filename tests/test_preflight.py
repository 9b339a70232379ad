"""Errors before the campaign runs: `config check`, `submit` and `run-loop` refuse, one line per problem naming the
file and the field, everything checkable without a calculation (structure file, calculator parameters, SPDX
license, finite numbers, the DFT executable, empty / binary campaign files)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import write

from autopipec_fw.config import ConfigError, load_campaign
from autopipec_fw.preflight import check_campaign

BIN = Path(sys.executable).parent


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "autopipec_fw.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False, timeout=120)


def campaign_file(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def file_campaign(tmp_path: Path, atoms: Atoms | None, extra: str = "") -> Path:
    if atoms is not None:
        write(tmp_path / "start.extxyz", atoms, format="extxyz")
    return campaign_file(tmp_path, f"name: pf\nstructure:\n  kind: file\n  file: start.extxyz\n{extra}")


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        check_campaign(load_campaign(path), str(path))
    lines = str(err.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines), lines  # one line each, naming the file
    return lines


def good_cell() -> Atoms:
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)


def test_a_sane_structure_file_passes(tmp_path: Path) -> None:
    path = file_campaign(tmp_path, good_cell())
    assert check_campaign(load_campaign(path), str(path)) == {"calculator": "emt"}


@pytest.mark.parametrize(("make", "expected"), [
    (lambda: None, "does not exist"),
    (lambda: "text", "ASE cannot read"),
    (lambda: Atoms("Cu2", positions=[[0, 0, 0], [0.1, 0, 0]], cell=[5, 5, 5], pbc=True),
     "atoms 1 and 2 are 0.1 Å apart"),
    (lambda: Atoms("Cu", positions=[[0, 0, 0]], cell=[0.01, 0.01, 0.01], pbc=True), "thick"),
    (lambda: Atoms("Cu2", positions=[[0, 0, 0], [1.3, 1.3, 0.0005]], cell=[7.6, 7.6, 0.001], pbc=True), "thick"),
    (lambda: Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]]), "no periodic cell"),
    (lambda: Atoms("Cu2", positions=[[0, 0, 0], [1e300, 0, 0]], cell=[5, 5, 5], pbc=True), "beyond"),
    (lambda: Atoms("Cu2", positions=[[0, 0, 0], [np.nan, 0, 0]], cell=[5, 5, 5], pbc=True), "non-finite"),
    (lambda: Atoms("Ag4", positions=np.eye(4, 3) * 2.5, cell=[8, 8, 8], pbc=True), "not in elements"),
])
def test_bad_structure_files_are_named(tmp_path: Path, make, expected: str) -> None:
    made = make()
    if made == "text":
        (tmp_path / "start.extxyz").write_text("hello, not a structure\n")
        made = None
    lines = problems(file_campaign(tmp_path, made))
    assert any("structure.file" in line and expected in line for line in lines), lines


def test_unknown_calculator_parameters_and_non_finite_numbers(tmp_path: Path) -> None:
    lines = problems(campaign_file(tmp_path, "oracle:\n  parameters: {asap_cutof: 1}\n"))
    assert any("oracle.parameters" in x and "asap_cutof" in x and "accepted: asap_cutoff" in x for x in lines)
    # GPAW's keywords are checked even where GPAW itself does not import
    lines = problems(campaign_file(tmp_path, "oracle:\n  calculator: gpaw\n  parameters: {ecut: 300}\n"))
    assert any("unknown parameter(s) ['ecut']" in x and "'gpaw'" in x for x in lines)
    lines = problems(campaign_file(tmp_path, "oracle:\n  calculator: gpaw\n  parameters: {mode: {ecut: .nan}}\n"))
    assert any("oracle.parameters.mode.ecut: nan is not a finite number" in x for x in lines)


def test_a_missing_dft_executable_is_named(tmp_path: Path) -> None:
    path = campaign_file(tmp_path, "oracle:\n  calculator: espresso\n  command: /nonexistent/pw.x\n")
    lines = problems(path)
    assert any("oracle.command" in x and "/nonexistent/pw.x" in x and "not found" in x for x in lines), lines


@pytest.mark.parametrize(("text", "field", "expected"), [
    ("fit:\n  cutoff: .inf\n", "fit.cutoff", "finite number"),
    ("akmc:\n  temperature: .nan\n", "akmc.temperature", "finite number"),
    ("package:\n  license: MIT-ish\n", "package.license", "not a known SPDX license identifier"),
    ("package:\n  license: cc-by-4.0\n", "package.license", "did you mean 'CC-BY-4.0'"),
    ("package:\n  citation: my paper\n", "package.citation", "BibTeX"),
])
def test_numbers_and_metadata_fail_at_load(tmp_path: Path, text: str, field: str, expected: str) -> None:
    path = campaign_file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_campaign(path)
    line = next(x for x in str(err.value).splitlines() if f"{field}:" in x)
    assert line.startswith(f"{path}: ") and expected in line


def test_empty_binary_and_non_utf8_files(tmp_path: Path) -> None:
    for content, expected in [(b"", "empty"), (b"# only a comment\n", "empty"), (b"\x00\x01\x02binary", "binary"),
                              (b"name: caf\xe9\n", "not UTF-8")]:
        p = tmp_path / "c.yaml"
        p.write_bytes(content)
        with pytest.raises(ConfigError) as err:
            load_campaign(p)
        assert str(p) in str(err.value) and expected in str(err.value)


def test_cli_config_check_submit_and_run_loop_refuse_first(tmp_path: Path) -> None:
    """Real processes: each command refuses in well under the time a campaign stage takes, starts no server and
    makes no campaign folder; every problem is its own line naming the file, with no traceback."""
    path = file_campaign(tmp_path, None, extra="oracle:\n  parameters: {foo: 1}\n")
    for args in (["config", "check"], ["submit"], ["run-loop", "--port", "1"]):
        t0 = time.monotonic()
        r = cli([*args, "--config", str(path)], tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and time.monotonic() - t0 < 60
        lines = [x.removeprefix("error: ") for x in r.stderr.strip().splitlines()]
        assert len(lines) == 2 and all(x.startswith(f"{path}: ") for x in lines), r.stderr
        assert "structure.file" in lines[0] and "oracle.parameters" in lines[1]
    assert not (tmp_path / "campaigns").exists() and not (tmp_path / ".launchpad").exists()
    ok = cli(["config", "check", "--config", str(file_campaign(tmp_path, good_cell()))], tmp_path)
    assert ok.returncode == 0 and "valid campaign 'pf'" in ok.stdout
