"""Shared stand-in pieces of Dify's ``api/core/ops`` (shapes from RECORDS.md, not Dify's code)."""
