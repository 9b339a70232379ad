"""The job graph of a campaign and the detours of its active-learning loop, built in one place.

    initial structures -> oracle x N (parallel) -> fit gen_000 -> aKMC #0 -> validate -> package
                                                                     |
                         on an extrapolation stop, detour:  oracle x K -> upfit gen_i+1 -> aKMC #i+1 (resumes)

Each Firework carries a category (`_category`: oracle, fit, akmc, production) so that workers can specialise
(`my_fworker.yaml` with `category: fit` on GPU nodes, ...), and a priority (`_priority`) so that a campaign
already under way finishes before a new one starts its expensive parts. Specs hold paths and small figures only.
"""

from __future__ import annotations

from pathlib import Path

from fireworks import Firework, Workflow

from autopipec_fw.config import Campaign
from autopipec_fw.firetasks import AkmcTask, FitTask, InitialDataTask, OracleTask, PackageTask, ValidateTask

CATEGORY = {"initial": "oracle", "oracle": "oracle", "fit": "fit", "akmc": "akmc", "validate": "production",
            "package": "production"}
PRIORITY = {"initial": 10, "oracle": 8, "fit": 7, "akmc": 6, "validate": 5, "package": 4}


def _fw(task, stage: str, campaign: Campaign, label: str, parents: list[Firework] | None = None) -> Firework:
    spec = {"_category": CATEGORY[stage], "_priority": PRIORITY[stage], "campaign": campaign.name, "stage": stage}
    return Firework([task], spec=spec, name=f"{campaign.name}: {label}", parents=parents)


def oracle_fireworks(campaign: Campaign, campaign_dir: str, structures_file: str, n: int,
                     source: str) -> list[Firework]:
    """Parallel oracle Fireworks for structures 0..n-1 of a batch file, `oracle.batch_size` per Firework."""
    size = campaign.oracle.batch_size
    fws = []
    for start in range(0, n, size):
        idx = list(range(start, min(start + size, n)))
        task = OracleTask(campaign_dir=campaign_dir, structures_file=structures_file, indices=idx, source=source)
        fws.append(_fw(task, "oracle", campaign, f"oracle {Path(structures_file).stem} {idx[0]}-{idx[-1]}"))
    return fws


def loop_detour(campaign: Campaign, campaign_dir: str, iteration: int, selected_file: str | None,
                n_selected: int, generation: int | None = None) -> Workflow:
    """After stop `iteration` of a run on generation `generation` (default: `iteration`, one fit per stop): label
    the selected structures, fit generation `generation` + 1, and resume aKMC (a new eOn segment for the new
    potential). Nothing selected (every candidate unphysical or already known): no labels, so no refit either;
    aKMC resumes with the same potential, and the next stop's fit is still the next generation (its index is
    the stopped run's generation + 1, not the iteration + 1)."""
    new = (iteration if generation is None else int(generation)) + 1
    if not selected_file or n_selected <= 0:
        nxt = _fw(AkmcTask(campaign_dir=campaign_dir, iteration=iteration + 1), "akmc", campaign,
                  f"aKMC #{iteration + 1} (resume, no new data)")
        return Workflow([nxt], name=f"{campaign.name} loop {iteration + 1}")
    oracles = oracle_fireworks(campaign, campaign_dir, selected_file, n_selected, f"iter_{iteration:03d}")
    fit = _fw(FitTask(campaign_dir=campaign_dir, generation=new), "fit", campaign,
              f"{'upfit' if campaign.fit.upfit else 'refit'} gen_{new:03d}", parents=oracles)
    nxt = _fw(AkmcTask(campaign_dir=campaign_dir, iteration=iteration + 1), "akmc", campaign,
              f"aKMC #{iteration + 1} (resume)", parents=[fit])
    return Workflow([*oracles, fit, nxt], name=f"{campaign.name} loop {iteration + 1}")


def teach_detour(campaign: Campaign, campaign_dir: str, round: int, teach_file: str, n: int,
                 generation: int) -> Workflow:
    """After a failed gate (validation ``round``): label what it teaches, refit, validate again (round + 1)."""
    oracles = oracle_fireworks(campaign, campaign_dir, teach_file, n, f"teach_{round:02d}")
    fit = _fw(FitTask(campaign_dir=campaign_dir, generation=generation, always_refit=True), "fit", campaign,
              f"refit gen_{generation:03d} (taught)", parents=oracles or None)
    val = _fw(ValidateTask(campaign_dir=campaign_dir, round=round + 1), "validate", campaign,
              f"validate (round {round + 1})", parents=[fit])
    return Workflow([*oracles, fit, val], name=f"{campaign.name} teach {round + 1}")


def campaign_workflow(campaign: Campaign, campaign_dir: str | Path, embed_settings: bool = False) -> Workflow:
    """The whole campaign. `embed_settings` puts the settings into the first task (for a self-contained YAML
    that `lpad add` accepts as is); otherwise the folder must already hold campaign.yaml (mlip-auto submit)."""
    cdir = str(campaign_dir)
    init_task = InitialDataTask(campaign_dir=cdir, campaign=_portable(campaign)) if embed_settings \
        else InitialDataTask(campaign_dir=cdir)
    init = _fw(init_task, "initial", campaign, "initial structures")
    fit0 = _fw(FitTask(campaign_dir=cdir, generation=0), "fit", campaign, "fit gen_000", parents=[init])
    akmc0 = _fw(AkmcTask(campaign_dir=cdir, iteration=0), "akmc", campaign, "aKMC #0", parents=[fit0])
    val = _fw(ValidateTask(campaign_dir=cdir), "validate", campaign, "validate", parents=[akmc0])
    pkg = _fw(PackageTask(campaign_dir=cdir), "package", campaign, "package", parents=[val])
    return Workflow([init, fit0, akmc0, val, pkg], name=campaign.name,
                    metadata={"campaign": campaign.name, "campaign_dir": cdir, "autopipec_fw": True})


def _portable(campaign: Campaign) -> dict:
    return campaign.model_dump(mode="json", exclude={"workdir"})


SPEC_CAMPAIGN_DIR = "~/autopipec_campaigns/cu-adatom-demo"
SPEC_DIST_DIR = "~/autopipec_campaigns/dist"


def demo_spec_yaml() -> str:
    """fireworks_specs/akmc_active_learning.yaml: the demo campaign as a workflow `lpad add` accepts as is."""
    import yaml

    from autopipec_fw.cli import EXAMPLES, _campaign_arg

    assert "cu-adatom" in EXAMPLES
    campaign = _campaign_arg("cu-adatom")
    campaign = campaign.model_copy(update={"package": campaign.package.model_copy(
        update={"dist_dir": Path(SPEC_DIST_DIR)})})
    wf = campaign_workflow(campaign, SPEC_CAMPAIGN_DIR, embed_settings=True)
    header = ("# The demo campaign (Cu adatom on Cu(100), EMT oracle) as a FireWorks workflow.\n"
              "#   lpad -l my_launchpad.yaml add fireworks_specs/akmc_active_learning.yaml\n"
              f"# Campaign folder: {SPEC_CAMPAIGN_DIR}; package: {SPEC_DIST_DIR}/ (edit both below to move them).\n"
              "# Generated by: python -m autopipec_fw.workflows > fireworks_specs/akmc_active_learning.yaml\n")
    d = wf.to_dict()
    # deterministic text: ids -1..-N in order, no timestamps (lpad add assigns both)
    ids = {fw["fw_id"]: -(i + 1) for i, fw in enumerate(d["fws"])}
    for fw in d["fws"]:
        fw["fw_id"] = ids[fw["fw_id"]]
        fw.pop("created_on", None)
        fw.pop("updated_on", None)
    d["links"] = {str(ids[int(k)]): [ids[c] for c in v] for k, v in d["links"].items()}
    for k in ("created_on", "updated_on"):
        d.pop(k, None)
    return header + yaml.safe_dump(d, sort_keys=False)


if __name__ == "__main__":
    import sys

    sys.stdout.write(demo_spec_yaml())
