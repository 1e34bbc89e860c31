"""Generated stackline.v1 wire code; regenerate with `python -m proto.codegen`."""
