import sys

from billing_engine.cli import main

sys.exit(main())
