"""One module per pipeline stage; each has a `run(params, ...)` that the CLI calls."""
