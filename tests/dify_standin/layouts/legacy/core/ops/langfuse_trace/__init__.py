"""Stand-in of core/ops/langfuse_trace."""
