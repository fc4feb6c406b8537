"""The provider's name and its registry keys (dependency-free: the start-up hook imports this)."""

PROVIDER_NAME = "traceexport"
SECRET_KEYS = ["token"]
OTHER_KEYS = ["mode", "sinks", "config_file", "endpoint", "tee"]

__all__ = ["OTHER_KEYS", "PROVIDER_NAME", "SECRET_KEYS"]
