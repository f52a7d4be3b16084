"""A Hugging Face causal LM trained with codistill from a user's own config directory (see README.md)."""
