"""What a user starts: a training (pipeline), its finishing stage, a cross-validation and predictions; they
compose training, tracking and outputs."""
