"""Property-based fuzz targets for toolcrib's parsers and matchers (hypothesis).

Each ``target_*.py`` module defines one :class:`tests.fuzz.engine.Target`: a strategy of inputs and a
check that raises on a wrong result. ``test_fuzz.py`` runs every target for 1,000 examples in the normal
test run; ``python -m tests.fuzz`` (``make fuzz``) runs each for ``FUZZ_SECONDS`` (default 60) seconds.
"""
