"""``python -m traceexport.dify``: install the start-up hook file, or check that it is in place.

* ``install-pth [--site-packages DIR]`` copies ``traceexport_dify_hook.pth`` into site-packages (use this
  when traceexport was installed in a way that did not place the file, e.g. an editable install).
* ``check`` says whether the file is present and whether ``TRACEEXPORT_DIFY_HOOK`` is set; exit 1 if not.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "traceexport_dify_hook.pth"
SOURCE = Path(__file__).with_name(PTH_NAME)


def site_packages() -> Path:
    """The running interpreter's site-packages (purelib) directory."""
    return Path(sysconfig.get_paths()["purelib"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m traceexport.dify", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install-pth", help=f"copy {PTH_NAME} into site-packages")
    install.add_argument("--site-packages", type=Path, default=None, help="target directory")
    sub.add_parser("check", help="is the hook file installed and the environment variable set?")
    args = parser.parse_args(argv)
    target_dir = getattr(args, "site_packages", None) or site_packages()
    target = target_dir / PTH_NAME
    if args.command == "install-pth":
        try:
            shutil.copyfile(SOURCE, target)
        except OSError as exc:
            print(f"cannot write {target}: {exc.strerror}; run as the owner of the environment", file=sys.stderr)
            return 1
        print(f"installed {target}; set TRACEEXPORT_DIFY_HOOK=1 in Dify's api and worker environments")
        return 0
    from traceexport.dify.autoload import ENV_FLAG, enabled

    present = target.is_file()
    print(f"{PTH_NAME}: {'present' if present else 'missing'} in {target_dir}")
    print(f"{ENV_FLAG}: {'enabled' if enabled() else 'not set (the hook stays off)'}")
    return 0 if present and enabled() else 1


if __name__ == "__main__":
    sys.exit(main())
