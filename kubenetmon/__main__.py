import sys

from kubenetmon.cli import main

sys.exit(main())
