import sys

from gpuacct.stack.cli import main

sys.exit(main())
