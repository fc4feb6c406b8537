"""Stand-in of api/core/ops."""
