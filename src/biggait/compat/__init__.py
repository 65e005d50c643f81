"""Compatibility with the official OpenGait BigGait code and checkpoints."""
