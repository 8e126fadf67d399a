"""python -m hipcad.appliance.kiosk"""

import sys

from hipcad.appliance.kiosk.app import main

sys.exit(main())
