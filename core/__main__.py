import sys

from diffcomp.cli import main

sys.exit(main())
