import sys

from hubtrain.cli import main

sys.exit(main())
