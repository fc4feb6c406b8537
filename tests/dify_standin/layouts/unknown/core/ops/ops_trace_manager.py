"""A layout the hook does not know: the registry lives somewhere else entirely."""

PROVIDERS = ("langfuse",)
