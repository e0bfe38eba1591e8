"""``relprop serve``: a local web page and the JSON API it runs on (:mod:`.app`), with the
page's files in ``static/``."""
from .app import (FORM_OVERHEAD_BYTES, MAX_PIXELS, MAX_UPLOAD_BYTES, ModelLock, Refused,
                  create_app, overlay_layer, run)

__all__ = ["create_app", "run", "ModelLock", "Refused", "overlay_layer", "MAX_UPLOAD_BYTES",
           "FORM_OVERHEAD_BYTES", "MAX_PIXELS"]
