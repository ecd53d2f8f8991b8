"""Network definitions and the one registry and loader of their published checkpoints."""
