"""Tools run by hand or by make, not by pytest: `python -m tests.tools.benchmark`, `.replay`, `.secret_scan`."""
