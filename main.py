"""Fine-tune an encoder on MASSIVE with one of five strategies, or use a trained one: dispatch on --task.

    python main.py --task baseline --data ../shared/data/massive/en-US.jsonl
    python main.py --task predict --checkpoint checkpoints/<run name> "wake me up at seven"

The training tasks (baseline, custom, supcon, simclr, lora) all run the one
loop in train.py; predict is in inference.py, and export, serve, check and
evaluate are in modules of their own.
"""
import importlib
import sys

from arguments import TASKS, parse_args
from fileio import UserError
from utils import setup_logging

# what runs each task that does not train, imported only when used (onnx, the web server and Ray are not needed to
# train, nor torch's training stack to serve)
USES = {"predict": "inference:predict", "export": "export:export", "serve": "serve:serve", "check": "check:check",
        "evaluate": "evaluation:evaluate", "suggest": "suggest:suggest"}


def main(argv=None):
    cfg = parse_args(argv)
    setup_logging()
    module, function = ("train:train" if TASKS[cfg.task].trains else USES[cfg.task]).split(":")
    return getattr(importlib.import_module(module), function)(cfg)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
