"""relprop's command line.

  relprop explain [IMAGE ...]   heat maps and a table, one method (default rap-stable)
  relprop compare [IMAGE ...]   several methods side by side in one picture
  relprop evaluate              the paper's checks of the maps: region perturbation,
                                localisation against boxes and masks, stability
  relprop serve                 a local web page and JSON API to explain images
  relprop models | methods      what relprop can explain, and with what

With no images, scikit-image's sample photos are explained. `relprop COMMAND --help` lists a
command's options.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from .. import models  # noqa: F401  (the model registry, as tests and users reach it)
from . import compare, evaluate, explain, listing, serve
from .common import Failure, one_line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="relprop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    explain.add_parser(sub)
    compare.add_parser(sub)
    evaluate.add_parser(sub)
    serve.add_parser(sub)
    listing.add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():  # a warning about a method is said once per run,
            warnings.simplefilter("once")  # not once per batch
            return args.run(args)
    except Failure as e:
        print(f"relprop: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relprop: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (relprop methods | head): nothing to say
        sys.stdout = None
        return 0


__all__ = ["main"]
