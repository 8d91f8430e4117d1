"""The science: one module per diagnostic, pure functions returning result dataclasses."""
