"""Everything that talks to MLflow (the only package that imports it): the store, runs and their liveness,
the run lock, resume, exports, run descriptions and browsing."""
