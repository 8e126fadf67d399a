"""python -m hipcad.appliance.kiosk"""

import sys

from hipcad.appliance.kiosk.cli import main

sys.exit(main())
