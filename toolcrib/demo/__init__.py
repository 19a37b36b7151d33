"""The bundled demo: a config of real offline MCP servers and a small notes server of our own."""
