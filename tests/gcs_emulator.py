"""`gcp-storage-emulator` as the GCS tests run it: `python tests/gcs_emulator.py start ...`.

One addition to the emulator: media downloads carry the object's `x-goog-generation` (and
metageneration) header, as real GCS sends it. tensorstore (orbax's array writer) reads an OCDBT
manifest back during a save of many arrays and refuses a download without that header
("Malformed StorageGeneration"). Everything else is the emulator as published.
"""

from __future__ import annotations

import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 - not found: the response already says so
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))


objects.download = download  # objects.get (alt=media) calls it by name
server.HANDLERS = tuple(
    (pattern, {method: download if handler is _download else handler for method, handler in methods.items()})
    for pattern, methods in server.HANDLERS
)

if __name__ == "__main__":
    sys.exit(main())
