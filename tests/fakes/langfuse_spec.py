"""Langfuse's published OpenAPI spec as a validator (../shared/contracts/langfuse-openapi.yaml, OpenAPI 3.0.1).

:func:`load_spec` returns a :class:`LangfuseSpec`, or the reason it cannot (the spec lives beside the
repository, not in it: user clones have no ``../shared``); callers skip the spec check visibly then.

The schemas are read the way the server behaves (its zod), not literally, in two places:

* ``nullable: true`` (OpenAPI 3.0) becomes ``anyOf [<schema>, null]`` for JSON Schema 2020-12;
* ``oneOf`` becomes ``anyOf``: the generated unions overlap (``IngestionUsage`` = ``Usage`` | ``OpenAIUsage``,
  whose properties are all optional, so every legacy usage matches both; ``MapValue``'s integer is also a
  number), and the server's ``z.union`` takes the first branch that fits.

An ingestion event is checked against the one branch of ``IngestionEvent`` its ``type`` names; types the
server accepts but the spec lacks (``agent-create`` and the other observation types) have no spec check.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SPEC_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "contracts" / "langfuse-openapi.yaml"
INGESTION = "/api/public/ingestion"


def server_view(node: Any) -> Any:
    """A copy of an OpenAPI 3.0 schema tree as JSON Schema 2020-12 that accepts what the server accepts."""
    if isinstance(node, list):
        return [server_view(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {("anyOf" if key == "oneOf" else key): server_view(value) for key, value in node.items()
           if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]} if out else {}
    return out


class LangfuseSpec:
    """Validators for ingestion events, the ingestion request and any named component schema."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import jsonschema

        self._schemas: dict[str, Any] = server_view(spec["components"]["schemas"])
        self._validator_class = jsonschema.Draft202012Validator
        self._validators: dict[str, Any] = {}
        self.event_schemas: dict[str, str] = {}  # event type -> component schema name
        for branch in spec["components"]["schemas"]["IngestionEvent"]["oneOf"]:
            marker, ref = branch["allOf"]
            self.event_schemas[marker["properties"]["type"]["enum"][0]] = ref["$ref"].rsplit("/", 1)[1]
        request = spec["paths"][INGESTION]["post"]["requestBody"]["content"]["application/json"]["schema"]
        request = json.loads(json.dumps(request))
        request["properties"]["batch"]["items"] = {}  # events are checked one by one, by type
        self._request = self._validator_class(server_view(request))

    def errors(self, schema_name: str, value: Any) -> list[str]:
        """Messages for each way ``value`` breaks ``components.schemas[schema_name]`` (empty: valid)."""
        validator = self._validators.get(schema_name)
        if validator is None:
            root = {"$ref": f"#/components/schemas/{schema_name}", "components": {"schemas": self._schemas}}
            validator = self._validators[schema_name] = self._validator_class(root)
        return [_message(error) for error in validator.iter_errors(value)]

    def event_errors(self, event: dict[str, Any]) -> list[str]:
        """Spec violations of one ingestion event (empty when valid or when the spec lacks its type)."""
        name = self.event_schemas.get(str(event.get("type")))
        return [] if name is None else self.errors(name, event)

    def request_errors(self, body: Any) -> list[str]:
        """Spec violations of the ingestion request envelope ``{"batch": [...], "metadata": ...}``."""
        return [_message(error) for error in self._request.iter_errors(body)]


def _message(error: Any) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return f"{path or '<root>'}: {error.message}"


@cache
def load_spec(path: Path = SPEC_PATH) -> LangfuseSpec | str:
    """The parsed spec, or why it is unavailable (missing file, unreadable YAML, jsonschema not installed)."""
    if not path.is_file():
        return f"{path} is absent (../shared is not beside the repository): no OpenAPI check of Langfuse bodies"
    try:
        import jsonschema  # noqa: F401  (checked here so the reason is one line)
        import yaml
    except ImportError as exc:
        return f"the OpenAPI check of Langfuse bodies needs {exc.name}"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: several times faster
    with path.open(encoding="utf-8") as handle:
        return LangfuseSpec(yaml.load(handle, Loader=loader))
