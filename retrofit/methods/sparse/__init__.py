"""A sparse linear head along an elastic-net path (the glm-saga problem)."""
