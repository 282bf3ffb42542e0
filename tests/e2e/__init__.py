"""End-to-end tests: the demo as a user runs it, in a subprocess, over HTTPS."""
