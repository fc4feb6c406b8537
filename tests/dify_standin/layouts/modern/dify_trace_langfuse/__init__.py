"""Stand-in of the dify-trace-langfuse workspace package."""
