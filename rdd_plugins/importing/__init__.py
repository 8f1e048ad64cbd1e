"""``rdd import``: sets that other tools distilled, read by format plugins and written as our set folders.

``contract`` (what a format's reader returns), ``safe_load`` (torch files without pickle),
``conversions`` (pixels from normalized values, labels), ``image_folders`` (class folders of PNG /
JPEG), ``provenance`` (what was read, by hash) and ``importer`` (check, clip on request, write).
"""

from .contract import ReadSet

__all__ = ["ReadSet"]
