import sys

from raysweep.launch import main

sys.exit(main())
