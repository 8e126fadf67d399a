"""python -m hipcad.appliance.worker"""

import sys

from hipcad.appliance.worker.cli import main

sys.exit(main())
