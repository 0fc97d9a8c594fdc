"""Source records -> unified rows: the runner, one module per format type, image path resolution."""
