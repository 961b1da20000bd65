"""Fuzzing: property-based (hypothesis) and coverage-guided (atheris) tests of every input
surface the agent parses: SDK datagrams, the config file, py-spy's output, the HTTP API's
query strings. ``targets.py`` holds one function per surface; ``python -m tests.fuzz`` runs
them under atheris; ``corpus/<target>/`` holds the seeds (and inputs that once crashed)."""
