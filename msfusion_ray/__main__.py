import sys

from msfusion_ray.cli import main

sys.exit(main())
