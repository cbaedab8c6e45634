"""What the flow contributes to a trained model on the whole test set (the numbers README quotes, and the report's
"What the flow contributes" section for any run).

    python benchmarks/flow_contribution.py [RUN_DIR|CHECKPOINT]     # default: the shipped model
"""
import json
import sys

from odenet.checkpoint import open_model
from odenet.flow import contribution

m = open_model(sys.argv[1] if len(sys.argv) > 1 else None, "cpu", test=True)
c = contribution(m.model, m.test)
c.pop("examples")
print(json.dumps(c, indent=1))
