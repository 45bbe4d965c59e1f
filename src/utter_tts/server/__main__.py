"""`python -m utter_tts.server`: the same as `utter-tts serve`."""

import sys

from utter_tts.server.cli import serve_main

if __name__ == "__main__":
    sys.exit(serve_main())
