import sys

from fisher_decorator.cli import main

sys.exit(main())
