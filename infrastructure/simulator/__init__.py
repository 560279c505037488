"""The provider simulator: a real HTTP server speaking three real providers' wire styles.

No AI provider is reachable from our machines, so tests, benchmarks and the embedded default
point the production adapters at this server instead. See :mod:`.app` for the routes.
"""
