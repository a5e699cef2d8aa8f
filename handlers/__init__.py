"""HTTP handlers, one module per endpoint group; each module exports ``routes``."""
