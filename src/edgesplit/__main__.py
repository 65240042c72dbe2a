import sys

from edgesplit.cli import main

sys.exit(main())
