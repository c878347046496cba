"""Pictures people upload: read safely, kept by content hash for the jobs that start from them."""
