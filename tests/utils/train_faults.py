"""Imported first by a test worker to stall or hang training at a chosen optimizer step.

The fault is read from the JSON file `DIFFQ_TEST_TRAIN_FAULT` names, at every step, so a test can
change it while the worker runs: `{"sleep_s": 0.2}` slows each step down; `{"hang_at_step": 5,
"marker": "/path"}` writes the marker file and hangs forever when step 5 is logged (after the
checkpoints before it were written), as a worker stuck or about to be killed would.
"""

import json
import os
import time
from pathlib import Path

from core.progress import TrainingReporter

FAULT_FILE = os.environ.get("DIFFQ_TEST_TRAIN_FAULT", "")
original_log_step = TrainingReporter.log_step


def faulty_log_step(self, step, **metrics):
    path = Path(FAULT_FILE)
    fault = json.loads(path.read_text()) if FAULT_FILE and path.is_file() else {}
    if fault.get("hang_at_step") == step:
        Path(fault["marker"]).write_text(str(step))
        while True:
            time.sleep(60)
    time.sleep(fault.get("sleep_s", 0))
    return original_log_step(self, step, **metrics)


TrainingReporter.log_step = faulty_log_step
