"""One module per group of CLI verbs (see cspnet.cli)."""
