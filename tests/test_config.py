"""Campaign configuration: defaults, validation messages that name the field, file errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autopipec_fw.config import Campaign, ConfigError, load_campaign


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "campaign.yaml"
    p.write_text(text)
    return p


def test_defaults_describe_the_demo() -> None:
    c = load_campaign(None)
    assert c.elements == ["Cu"]
    assert c.structure.kind == "adatom_on_slab" and c.structure.surface == "100"
    assert c.oracle.calculator == "emt"
    assert c.gamma.select_lower < c.gamma.threshold


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    c = Campaign(name="x1", akmc={"temperature": 500, "kmc_steps": 3})
    again = load_campaign(write(tmp_path, c.to_yaml()))
    assert again.akmc.temperature == 500 and again.akmc.kmc_steps == 3 and again.name == "x1"


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("fit:\n  cutoff: -1\n", "fit.cutoff", "greater than 0"),
        ("fit:\n  cutoff: abc\n", "fit.cutoff", "valid number"),
        ("gamma:\n  threshold: 2\n  select_lower: 3\n", "gamma", "select_lower must be below threshold"),
        ("akmc:\n  temprature: 300\n", "akmc.temprature", "unknown field"),
        ("oracle:\n  calculator: dftb\n", "oracle.calculator", "'emt', 'gpaw', 'espresso' or 'vasp'"),
        ("elements: [Cu, Xx]\n", "elements", "unknown chemical symbol"),
        ("package:\n  version: '1.0'\n", "package.version", "should match pattern"),
        ("structure:\n  kind: file\n", "structure", "needs 'file'"),
        ("elements: [Al]\n", "(top level)", "structure.element 'Cu' is not in elements"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, text: str, field: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_campaign(path)
    msg = str(err.value)
    assert str(path) in msg
    assert f"{field}:" in msg
    assert expected in msg


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read campaign file"):
        load_campaign(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_campaign(write(tmp_path, "fit: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_campaign(write(tmp_path, "- a\n- b\n"))


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text("structure:\n  kind: file\n  file: start.xyz\nworkdir: run\n")
    c = load_campaign(p)
    assert c.structure.file == (tmp_path / "sub" / "start.xyz").resolve()
    assert c.resolved_workdir() == (tmp_path / "sub" / "run").resolve()


def test_cli_reports_the_field_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "akmc:\n  kmc_steps: zero\n")
    r = subprocess.run([sys.executable, "-m", "autopipec_fw.cli", "config", "check", "--config", str(path)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "akmc.kmc_steps" in r.stderr and "Traceback" not in r.stderr


def test_built_in_examples_load_by_name_and_by_file_stem() -> None:
    """Every built-in example validates; `--config al-adatom-gpaw` and `--config al_adatom_gpaw` are the same."""
    from autopipec_fw.cli import EXAMPLES, _campaign_arg
    from autopipec_fw.oracle.calculators import effective_parameters
    from autopipec_fw.oracle.kpoints import kpoint_grid
    from autopipec_fw.structures import build_structure

    names = {name: _campaign_arg(name).name for name in EXAMPLES}
    assert len(set(names.values())) == len(EXAMPLES)
    gpaw = _campaign_arg("al-adatom-gpaw")
    assert _campaign_arg("al_adatom_gpaw") == gpaw
    assert gpaw.oracle.calculator == "gpaw" and gpaw.elements == ["Al"]
    assert effective_parameters(gpaw.oracle)["mode"] == {"name": "pw", "ecut": 200.0}
    slab = build_structure(gpaw.structure)
    assert len(slab) == 13 and kpoint_grid(slab, gpaw.oracle.kpoint_density).grid == (3, 3, 1)


def test_config_check_and_show_take_a_built_in_example_by_name(capsys) -> None:
    from autopipec_fw.cli import main

    assert main(["config", "check", "--config", "al-vacancy"]) == 0
    assert "valid campaign 'al-vacancy-demo'" in capsys.readouterr().out
    assert main(["config", "show", "--config", "al_adatom_gpaw"]) == 0  # the file's stem works too
    assert "calculator: gpaw" in capsys.readouterr().out
