"""Where eOn lives: the local runtime (server from the eon-akmc sdist, our client on pyeonclient) or a user's own.

`python -m autopipec_fw.eon.runtime fetch-server --version V --sha256 H --dest DIR` is the setup
step that puts the pure-Python eOn server in place: it downloads the sdist from the package index, checks its
sha256 and extracts only the `eon/` package (safely: no absolute paths, no `..`, no links).
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_INDEX = "https://pypi.org/simple"


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for k, v in attrs:
                if k == "href" and v:
                    self.hrefs.append(v)


def _sdist_url(index: str, project: str, filename: str) -> str:
    page = f"{index.rstrip('/')}/{project}/"
    with urllib.request.urlopen(page, timeout=120) as r:  # noqa: S310 - https index URL we chose
        parser = _Links()
        parser.feed(r.read().decode())
    for href in parser.hrefs:
        url = urllib.parse.urljoin(page, href)
        if urllib.parse.urlparse(url).path.endswith("/" + filename):
            return url.split("#", 1)[0]
    raise RuntimeError(f"{filename} not listed on {page}")


def _safe_members(tar: tarfile.TarFile, prefix: str) -> list[tarfile.TarInfo]:
    out = []
    for m in tar.getmembers():
        name = m.name
        if not name.startswith(prefix):
            continue
        parts = Path(name).parts
        if name.startswith("/") or ".." in parts:
            raise RuntimeError(f"unsafe path in archive: {name!r}")
        if not (m.isfile() or m.isdir()):
            continue  # links and devices are never extracted
        out.append(m)
    return out


def extract_sdist(
    version: str, sha256: str, dest: Path, prefixes: tuple[str, ...], index: str | None = None
) -> Path:
    """Download eon-akmc==version (sdist) from the package index, verify its sha256, and extract the members
    under ``prefixes`` (paths inside the sdist, e.g. ``"eon/"``) to dest (replaced)."""
    index = index or os.environ.get("MLIP_AUTO_PYPI_SIMPLE", DEFAULT_INDEX)
    filename = f"eon_akmc-{version}.tar.gz"
    url = _sdist_url(index, "eon-akmc", filename)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=600) as r, path.open("wb") as f:  # noqa: S310
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != sha256:
            raise RuntimeError(f"{filename}: sha256 {digest.hexdigest()} != expected {sha256}")
        top = f"eon_akmc-{version}/"
        staging = Path(tmp) / "x"
        with tarfile.open(path) as tar:
            members = []
            for prefix in prefixes:
                found = _safe_members(tar, top + prefix)
                if not found:
                    raise RuntimeError(f"{filename}: nothing under {prefix!r}")
                members += found
            tar.extractall(staging, members=members, filter="data")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / top.rstrip("/")), dest)
    log.info("eon-akmc %s: %s extracted to %s", version, ", ".join(prefixes), dest)
    return dest


def fetch_server(version: str, sha256: str, dest: Path, index: str | None = None) -> Path:
    """Download eon-akmc==version (sdist), verify it, and extract its pure-Python `eon/` package under dest."""
    return extract_sdist(version, sha256, dest, ("eon/", "LICENSE"), index)


def check_local_runtime() -> dict[str, str]:
    """Versions of the local eOn runtime's parts; raises RuntimeError naming the part that is missing."""
    import importlib

    out: dict[str, str] = {}
    for mod in ("eon.server", "pyeonclient", "pyace"):
        try:
            m = importlib.import_module(mod)
        except ImportError as e:
            raise RuntimeError(f"local eOn runtime: cannot import {mod} ({e}); run scripts/setup.sh") from None
        top = importlib.import_module(mod.split(".")[0])
        out[mod] = str(getattr(top, "__version__", getattr(m, "__version__", "?")))
    from pyeonclient import Matter, MinModeSaddleSearch, make_potential_from_ase  # noqa: F401 - the bound pieces

    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autopipec_fw.eon.runtime")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch-server", help="download and extract the pure-Python eOn server")
    f.add_argument("--version", required=True)
    f.add_argument("--sha256", required=True)
    f.add_argument("--dest", required=True, type=Path)
    f.add_argument("--index", default=None)
    sub.add_parser("check", help="check that the local eOn runtime (server, pyeonclient client) imports")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "fetch-server":
        fetch_server(args.version, args.sha256, args.dest, args.index)
    elif args.cmd == "check":
        try:
            for k, v in check_local_runtime().items():
                log.info("%s %s", k, v)
        except RuntimeError as e:
            log.error("%s", e)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
