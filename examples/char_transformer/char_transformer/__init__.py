"""A user's own model for codistill: a small decoder-only transformer language model over characters."""
