"""Entry point for `ray job submit --working-dir . -- python jobs/refine.py --in ... --out ... --refiner ...`.

Takes the same options as `refine-dataset`; the job connects to the cluster it was
submitted to (Ray sets RAY_ADDRESS for it), so --address is not needed there.
"""

import os
import sys

# Under `ray job submit` the working directory is shipped, not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.commands.refine import refine  # noqa: E402

if __name__ == "__main__":
    refine(prog_name="jobs/refine.py")
