"""Stand-in of Dify's api/core package."""
