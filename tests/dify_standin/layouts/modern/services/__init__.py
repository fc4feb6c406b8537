"""Stand-in of api/services."""
