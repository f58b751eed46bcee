import sys

from vendorctl.cli import main

sys.exit(main())
