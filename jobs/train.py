"""Entry point for `ray job submit --working-dir . -- python jobs/train.py --synthetic ... `.

Takes the same options as `simgan train`; the job connects to the cluster it was
submitted to (Ray sets RAY_ADDRESS for it).
"""

import os
import sys

# Under `ray job submit` the working directory is shipped, not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.commands.train import train  # noqa: E402

if __name__ == "__main__":
    train(prog_name="jobs/train.py")
