"""Image post-processing (pyvips) and the moderation classifier's HTTP adapter."""
