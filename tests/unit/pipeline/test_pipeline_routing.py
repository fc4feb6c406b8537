"""Fan-out filters and trace-deterministic sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_helpers import ScriptedSink, StandInMapping, make_records

from traceexport.errors import ConfigError
from traceexport.pipeline import Pipeline, PipelineSettings, Route
from traceexport.pipeline.routing import check_routes, mask_for, route_matches, sampled


def test_sampling_is_deterministic_per_trace_key() -> None:
    """The same trace key gets the same decision every time, so a trace is kept or dropped whole."""
    keys = [f"trace-{i}" for i in range(2000)]
    first = [sampled(k, 0.3) for k in keys]
    assert first == [sampled(k, 0.3) for k in keys]
    assert 0.25 < sum(first) / len(keys) < 0.35


def test_sampling_edges_keep_all_or_nothing() -> None:
    """A rate of 1 keeps every trace and 0 keeps none."""
    assert all(sampled(f"t{i}", 1.0) for i in range(50))
    assert not any(sampled(f"t{i}", 0.0) for i in range(50))


def test_type_and_app_filters() -> None:
    """A route with record_types / app_ids keeps only matching records."""
    record = make_records(1, app_id="app-a")[0]
    sink = ScriptedSink()
    assert route_matches(Route(sink, StandInMapping(), record_types=frozenset({"message"})), record)
    assert not route_matches(Route(sink, StandInMapping(), record_types=frozenset({"workflow"})), record)
    assert route_matches(Route(sink, StandInMapping(), app_ids=frozenset({"app-a"})), record)
    assert not route_matches(Route(sink, StandInMapping(), app_ids=frozenset({"app-b"})), record)


def test_mask_has_a_bit_per_matching_route() -> None:
    """The spool mask names exactly the sinks whose route matched."""
    record = make_records(1)[0]
    routes = [Route(ScriptedSink("a"), StandInMapping()),
              Route(ScriptedSink("b"), StandInMapping(), record_types=frozenset({"tool"})),
              Route(ScriptedSink("c"), StandInMapping())]
    assert mask_for(record, routes, {"a": 0, "b": 1, "c": 5}) == 0b100001


def test_duplicate_sinks_and_bad_rates_are_config_errors() -> None:
    """Two routes to one sink name, or a sample rate outside [0, 1], are reported together."""
    routes = [Route(ScriptedSink("a"), StandInMapping()), Route(ScriptedSink("a"), StandInMapping(), sample=2.0)]
    with pytest.raises(ConfigError) as err:
        check_routes(routes)
    assert len(err.value.problems) == 2


def test_routing_is_decided_when_a_record_is_accepted(tmp_path: Path) -> None:
    """As the README says: across a restart with another config, a sink added later gets only the records
    accepted after it, and records already routed to a sink stay owed to it though its filter now leaves their
    type out (the filter applies to what is accepted next)."""
    settings = PipelineSettings(fsync=False, poll_interval=0.01)
    with Pipeline(tmp_path, [Route(ScriptedSink("a"), StandInMapping())], settings) as pipe:
        pipe.accept(make_records(2))
    a, b = ScriptedSink("a"), ScriptedSink("b")
    only_workflows = frozenset({"workflow"})
    with Pipeline(tmp_path, [Route(a, StandInMapping(), record_types=only_workflows),
                             Route(b, StandInMapping())], settings) as pipe:
        pipe.accept(make_records(1, start=10))
        pipe.start()
        assert pipe.wait_idle(10)
    assert len(a.delivered) == 2 and len(b.delivered) == 1
