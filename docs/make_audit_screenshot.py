"""Photograph an audit page (``lungvlm audit``'s ``OUT/audit.html``) with headless Chromium.

Run from the repository root after an audit::

    .venv/bin/lungvlm audit --ckpt runs/stage3/checkpoints/last_calibrated.ckpt --out runs/audit
    .venv/bin/python docs/make_audit_screenshot.py runs/audit/audit.html [--out docs/audit_page.png]

Needs Debian's Chromium (``apt-get install chromium``); the page has no script and no external
resource, so the browser needs no network. The figures are those of the audited checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_case_page_screenshot import screenshot, shrink_png  # noqa: E402

WINDOW_PX = (1200, 3200)  # the headline, calibration and baseline sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="audit.html written by `lungvlm audit`")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("audit_page.png"))
    args = parser.parse_args(argv)
    if not args.page.is_file():
        parser.error(f"{args.page} does not exist: run `lungvlm audit` first")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    screenshot(args.page, args.out, WINDOW_PX)
    shrink_png(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
