import sys

from mnemeta.cli import main

sys.exit(main())
