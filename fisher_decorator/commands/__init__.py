"""Sub-commands of ``fidec`` that drive training: ``train``, ``eval``, ``plot``."""
