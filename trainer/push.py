"""Share a trained model on the Hugging Face Hub: ``python -m trainer.push --model DIR --repo user/name``.

    python -m trainer.push --model runs/imdb/best --repo you/imdb-sentiment
    python -m trainer.push --model runs/imdb/best-onnx-int8 --repo you/imdb-sentiment-onnx --private

The folder must be a complete export (``best/``, ``final/`` or an ONNX export): its files load,
their checksums match config.json, and it has its model card; anything else is refused before
the network is touched. The repo is created if missing. The token is the one ``huggingface_hub``
finds (``HF_TOKEN``, or ``hf auth login`` once); it is never asked for. Others then load the model
with ``--model you/imdb-sentiment`` or ``load_model("you/imdb-sentiment")``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.errors import exit_for
from trainer.inference.folder import check_complete
from trainer.inference.hub import push


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.push", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an exported model folder (runs/<run>/best)")
    parser.add_argument("--repo", required=True, help="the Hub repo id to upload to (user/name or org/name)")
    parser.add_argument("--private", action="store_true", help="create the repo private (an existing one is kept)")
    parser.add_argument("--revision", help="the branch to push to (created if missing; default main)")
    parser.add_argument("--message", default="", help="the commit message")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        model_dir = Path(args.model)
        check_complete(model_dir)
        url = push(model_dir, args.repo, args.private, args.revision, args.message)
    except Exception as exc:
        return exit_for(exc, args.debug)
    print(f"pushed {model_dir} to {args.repo}: {url}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
