"""Contract-checking fake backends for tests: in-thread fixtures or ``python -m tests.fakes.<name>``."""

from tests.fakes._server import FakeServer, Fault, RecordedRequest, Response, run_main

__all__ = ["FakeServer", "Fault", "RecordedRequest", "Response", "run_main"]
