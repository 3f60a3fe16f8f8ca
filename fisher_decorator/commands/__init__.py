"""Every ``fidec`` sub-command, one module each: ``register(subparsers)`` adds its parser (see ``cli.py``)."""
