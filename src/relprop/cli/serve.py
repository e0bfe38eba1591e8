"""``relprop serve``: the options of the web page's server (:mod:`relprop.serve`)."""
from __future__ import annotations

from .common import model_options, phrased


def add_parser(sub) -> None:
    sv = sub.add_parser("serve", help="a local web page (and JSON API) to explain images in the "
                                      "browser")
    model_options(sv)
    sv.add_argument("--images", default=None,
                    help="a folder of images offered as samples besides scikit-image's")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    sv.set_defaults(run=run)


def run(args) -> int:
    from .. import serve  # the web stack loads only for this command
    with phrased():
        return serve.run(args.model, args.weights, args.device, args.images, args.host,
                         args.port)
