import sys

from lmloss.cli import main

sys.exit(main())
