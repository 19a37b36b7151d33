"""One module per console page, each with ``routes(console) -> list[(method, path, handler)]``."""
