"""A hospital node its data owner controls: approved apps only (``gate``), and a check before joining (``check``)."""
