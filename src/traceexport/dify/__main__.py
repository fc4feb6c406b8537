"""``python -m traceexport.dify``: install the start-up hook file, or check that the hook would work here.

* ``install-pth [--site-packages DIR]`` writes ``traceexport_dify_hook.pth`` into site-packages (a wheel
  install already places it; this is for editable installs and images that copy environments around).
* ``check`` runs where Dify runs (``cd /app/api``, with Dify's environment) and says, one line per check,
  whether the hook would work: start-up file and ``TRACEEXPORT_DIFY_HOOK``, Dify's registry patched, the
  provider resolvable, stored configs readable, a config round-tripped through Dify's own
  encrypt/decrypt; and notes what the hook's spools still owe, dead-lettered or dropped. Exit 0 when it would
  work, 1 with the reason when it would not.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

from traceexport.dify.autoload import PTH_LINE, PTH_NAME

DESCRIPTION = "Install the Dify hook's start-up file, or check that the hook would work here."
INSTALL_HELP = (f"Write {PTH_NAME} into site-packages (a wheel install already places it; this is for editable "
                "installs and images that copy environments around).")
CHECK_HELP = ("Run where Dify runs (cd /app/api, with Dify's environment): one line per check (start-up file, "
              "TRACEEXPORT_DIFY_HOOK, Dify's registry patched, the provider resolvable, stored configs readable, a "
              "config round-tripped through Dify's own encrypt/decrypt). Exit 0 when the hook would work, 1 with "
              "the reason when it would not.")


def site_packages() -> Path:
    """The running interpreter's site-packages (purelib) directory."""
    return Path(sysconfig.get_paths()["purelib"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m traceexport.dify", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install-pth", help=f"write {PTH_NAME} into site-packages", description=INSTALL_HELP)
    install.add_argument("--site-packages", type=Path, default=None, metavar="DIR",
                         help="target directory (default: this interpreter's site-packages)")
    check = sub.add_parser("check", help="would the hook work in this Dify? (run in Dify's api directory)",
                           description=CHECK_HELP)
    check.add_argument("--site-packages", type=Path, default=None, metavar="DIR",
                       help="where the start-up file should be (default: this interpreter's site-packages)")
    args = parser.parse_args(argv)
    target = (args.site_packages or site_packages()) / PTH_NAME
    if args.command == "install-pth":
        try:
            target.write_text(PTH_LINE + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"cannot write {target}: {exc.strerror}; run as the owner of the environment", file=sys.stderr)
            return 1
        print(f"installed {target}; set TRACEEXPORT_DIFY_HOOK=1 in Dify's api and worker environments")
        return 0
    from traceexport.dify.check import render, run_checks

    text, status = render(run_checks(target))
    print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
