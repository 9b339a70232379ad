"""Package metadata rules shared by the campaign check and the manifest: SPDX license expressions, BibTeX.

Plain functions, and the field types `SpdxLicense` / `BibTeX` that apply them: `mlip-auto config check` refuses a
bad license before the campaign runs, and the manifest refuses it again when a package is written.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

# SPDX identifiers accepted as they are (a practical subset of https://spdx.org/licenses/ for data and
# software); anything else must be a "LicenseRef-..." identifier. Expressions combine them with AND/OR/WITH.
SPDX_LICENSES = frozenset(
    """
    0BSD AFL-3.0 AGPL-3.0-only AGPL-3.0-or-later Apache-1.1 Apache-2.0 APSL-2.0 Artistic-2.0 BlueOak-1.0.0
    BSD-1-Clause BSD-2-Clause BSD-2-Clause-Patent BSD-3-Clause BSD-3-Clause-Clear BSD-4-Clause BSL-1.0
    CC-BY-1.0 CC-BY-2.0 CC-BY-2.5 CC-BY-3.0 CC-BY-4.0 CC-BY-NC-4.0 CC-BY-NC-ND-4.0 CC-BY-NC-SA-4.0
    CC-BY-ND-4.0 CC-BY-SA-3.0 CC-BY-SA-4.0 CC0-1.0 CDDL-1.0 CDLA-Permissive-1.0 CDLA-Permissive-2.0
    CDLA-Sharing-1.0 CECILL-2.1 ECL-2.0 EPL-1.0 EPL-2.0 EUPL-1.1 EUPL-1.2 GFDL-1.3-only GFDL-1.3-or-later
    GPL-2.0-only GPL-2.0-or-later GPL-3.0-only GPL-3.0-or-later ISC LGPL-2.1-only LGPL-2.1-or-later
    LGPL-3.0-only LGPL-3.0-or-later LPPL-1.3c MIT MIT-0 MPL-1.1 MPL-2.0 MS-PL NCSA ODbL-1.0 ODC-By-1.0
    OFL-1.1 OSL-3.0 PDDL-1.0 PostgreSQL PSF-2.0 Python-2.0 Unlicense UPL-1.0 W3C WTFPL X11 Zlib ZPL-2.1
    """.split()
)
SPDX_EXCEPTIONS = frozenset({"Classpath-exception-2.0", "LLVM-exception", "GCC-exception-3.1", "OpenJDK-assembly-exception-1.0"})
_LICENSEREF = re.compile(r"^(DocumentRef-[A-Za-z0-9.-]+:)?LicenseRef-[A-Za-z0-9.-]+$")
_BIBTEX = re.compile(r"^\s*@[A-Za-z]+\s*\{\s*[^,\s{}]+\s*,.*\}\s*$", re.S)


def check_spdx(expr: str) -> str:
    """Validate an SPDX license expression (ids from SPDX_LICENSES or LicenseRef-*, AND/OR/WITH, parens)."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expr)
    if not tokens:
        raise ValueError("expected an SPDX license identifier such as 'CC-BY-4.0' or 'MIT'")
    expect_id, depth, after_with = True, 0, False
    for t in tokens:
        if t == "(":
            if not expect_id:
                raise ValueError(f"unexpected '(' in license expression {expr!r}")
            depth += 1
        elif t == ")":
            depth -= 1
            if depth < 0 or expect_id:
                raise ValueError(f"unbalanced parentheses in license expression {expr!r}")
        elif t in ("AND", "OR", "WITH"):
            if expect_id:
                raise ValueError(f"operator {t} without a license before it in {expr!r}")
            expect_id, after_with = True, t == "WITH"
        else:
            if not expect_id:
                raise ValueError(f"two licenses without AND/OR between them in {expr!r}")
            base = t[:-1] if t.endswith("+") else t
            if after_with:
                if t not in SPDX_EXCEPTIONS:
                    raise ValueError(f"{t!r} is not a known SPDX license exception")
            elif base not in SPDX_LICENSES and not _LICENSEREF.match(t):
                close = sorted(x for x in SPDX_LICENSES if x.lower() == base.lower())
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"{t!r} is not a known SPDX license identifier{hint}; use an id from https://spdx.org/licenses/ "
                    "(e.g. 'CC-BY-4.0', 'MIT') or 'LicenseRef-<name>'"
                )
            expect_id, after_with = False, False
    if expect_id or depth != 0:
        raise ValueError(f"incomplete license expression {expr!r}")
    return expr


def check_bibtex(v: str) -> str:
    """One BibTeX entry (``@kind{key, ...}`` with balanced braces); ValueError otherwise."""
    if not _BIBTEX.match(v) or v.count("{") != v.count("}"):
        raise ValueError("expected one BibTeX entry such as '@article{key, title = {...}, year = {2026}}'")
    return v


SpdxLicense = Annotated[str, AfterValidator(check_spdx)]
"""A pydantic field type: an SPDX license expression (`check_spdx`)."""
BibTeX = Annotated[str, AfterValidator(check_bibtex)]
"""A pydantic field type: one BibTeX entry (`check_bibtex`)."""
