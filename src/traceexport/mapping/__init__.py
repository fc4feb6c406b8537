"""The declarative mapping engine: YAML specs compiled once into closures; pure, no I/O after load."""

from traceexport.mapping.engine import Entity, Mapping, compile_document, load_mapping
from traceexport.mapping.functions import REGISTRY, function_names
from traceexport.mapping.loader import BACKEND_KINDS, BACKENDS, builtin_mapping_path

__all__ = [
    "BACKENDS",
    "BACKEND_KINDS",
    "REGISTRY",
    "Entity",
    "Mapping",
    "builtin_mapping_path",
    "compile_document",
    "function_names",
    "load_mapping",
]
