"""Stand-in provider enum, base config and one built-in provider config (Langfuse-like)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel


class TracingProviderEnum(StrEnum):
    LANGFUSE = "langfuse"
    LANGSMITH = "langsmith"


class BaseTracingConfig(BaseModel):
    """Base of every provider config."""


class LangfuseConfig(BaseTracingConfig):
    public_key: str
    secret_key: str
    host: str = "https://api.langfuse.com"


class LangSmithConfig(BaseTracingConfig):
    api_key: str
    project: str = "default"
    endpoint: str = ""
