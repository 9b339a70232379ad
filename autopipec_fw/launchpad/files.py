"""The FireWorks files of a workspace: `my_launchpad.yaml` and `FW_config.yaml`.

Stock FireWorks tools read both from the current folder, so after `mlip-auto db start` the plain
`lpad`, `rlaunch`, `qlaunch` and `lpad webgui` run in the workspace work unchanged. A user with a real
MongoDB writes `my_launchpad.yaml` with a URI instead (`write_launchpad_file(..., uri=...)`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

LAUNCHPAD_FILE = "my_launchpad.yaml"
FW_CONFIG_FILE = "FW_config.yaml"
DB_NAME = "fireworks"


def launchpad_settings(host: str = "127.0.0.1", port: int = 27018, uri: str | None = None,
                       name: str = DB_NAME) -> dict[str, Any]:
    if uri is not None:
        return {"host": uri, "name": name, "uri_mode": True, "logdir": None, "strm_lvl": "INFO"}
    return {
        "host": host, "port": port, "name": name, "logdir": None, "strm_lvl": "INFO",
        "mongoclient_kwargs": {"directConnection": True, "serverSelectionTimeoutMS": 20000},
    }


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_launchpad_file(workspace: Path, **kwargs: Any) -> Path:
    path = Path(workspace) / LAUNCHPAD_FILE
    _atomic_write(path, yaml.safe_dump(launchpad_settings(**kwargs), sort_keys=False))
    return path


def fw_config(workspace: Path) -> dict[str, Any]:
    workspace = Path(workspace).resolve()
    return {
        "ADD_USER_PACKAGES": ["autopipec_fw.firetasks"],
        "LAUNCHPAD_LOC": str(workspace / LAUNCHPAD_FILE),
        "ECHO_TEST": None,
        "PRINT_FW_JSON": False,
        "PRINT_FW_YAML": False,
        "WEBSERVER_HOST": "127.0.0.1",
    }


def write_fw_config(workspace: Path) -> Path:
    """Write our settings into the workspace's FW_config.yaml; settings the user added there (e.g.
    RUN_EXPIRATION_SECS, PING_TIME_SECS) are kept."""
    path = Path(workspace) / FW_CONFIG_FILE
    cfg: dict[str, Any] = {}
    try:
        existing = yaml.safe_load(path.read_text())
        if isinstance(existing, dict):
            cfg.update(existing)
    except (OSError, yaml.YAMLError):
        pass
    cfg.update({k: v for k, v in fw_config(workspace).items() if v is not None})
    _atomic_write(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


def load_launchpad(path: str | Path):  # -> fireworks.LaunchPad (kept lazy: FireWorks imports are slow)
    """A LaunchPad from a my_launchpad.yaml, with a clear error for a missing or bad file."""
    from fireworks import LaunchPad

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the LaunchPad file ({e.strerror}); "
                                "run 'mlip-auto db start' or write one with your MongoDB URI") from None
    if not isinstance(data, dict) or "host" not in data:
        raise ValueError(f"{path}: expected a FireWorks LaunchPad mapping with at least 'host'")
    lp = LaunchPad.from_dict(data)
    _one_console_handler(lp.m_logger)
    return lp


def _one_console_handler(logger) -> None:
    """FireWorks gives its logger a console handler of its own; when the application has set up logging (a
    handler on the root logger, as mlip-auto does) that handler is dropped, so each line appears once (through
    the application's handler, at its level). Without one, FireWorks' own output is left as it is."""
    import logging
    import sys

    if not logging.getLogger().handlers:
        return
    consoles = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s is not None}
    for h in list(logger.handlers):
        if type(h) is logging.StreamHandler and id(getattr(h, "stream", None)) in consoles:
            logger.removeHandler(h)


def ensure_initialized(lp) -> bool:
    """Initialise a brand-new FireWorks database (what `lpad reset` does), never one that holds anything.

    Returns True if it was initialised now."""
    if lp.fw_id_assigner.count_documents({}) or lp.workflows.count_documents({}) or lp.fireworks.count_documents({}):
        return False
    lp.reset("", require_password=False)
    return True
