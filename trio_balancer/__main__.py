import sys

from trio_balancer.cli import main

sys.exit(main())
