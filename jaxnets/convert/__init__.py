"""Weight conversion from other frameworks' checkpoints into jaxnets variables."""
