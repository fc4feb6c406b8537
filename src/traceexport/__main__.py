"""``python -m traceexport``: the same command line as the ``traceexport`` script."""

from traceexport.cli import run

if __name__ == "__main__":
    run()
