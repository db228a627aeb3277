"""The runner: the command line, one worker process per (backend, model, family, seed), and the timing protocol."""
