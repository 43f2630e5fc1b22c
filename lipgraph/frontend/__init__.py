"""Frontend: trace a module to an fx graph, normalise op spellings, run it once for shapes and constants."""
