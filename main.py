"""Fine-tune an encoder on MASSIVE with one of five strategies, or use a trained one: dispatch on --task.

    python main.py --task baseline --data ../shared/data/massive/en-US.jsonl
    python main.py --task predict --checkpoint checkpoints/<run name> "wake me up at seven"

The training tasks (baseline, custom, supcon, simclr, lora) all run the one
loop in train.py; predict is in inference.py, export and serve in their own
modules, imported only when used (onnx and the web server are not needed to train).
"""
import sys

from arguments import TASKS, parse_args
from fileio import UserError
from utils import setup_logging


def main(argv=None):
    cfg = parse_args(argv)
    setup_logging()
    if TASKS[cfg.task].trains:
        from train import train

        return train(cfg)
    if cfg.task == "predict":
        from inference import predict

        return predict(cfg)
    if cfg.task == "export":
        from export import export

        return export(cfg)
    from serve import serve

    return serve(cfg)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
