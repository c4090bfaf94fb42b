"""Applying gradients to sessions: exactly once, atomically, in order."""
