"""hipcad.export: turns a trained checkpoint into a model bundle (workstation tooling; needs torch)."""
