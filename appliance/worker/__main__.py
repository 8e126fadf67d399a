"""python -m hipcad.appliance.worker"""

import sys

from hipcad.appliance.worker.service import main

sys.exit(main())
