"""Stand-in of api/core/ops/entities."""
