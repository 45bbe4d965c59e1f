"""`python -m utter_tts.server`: the speech server alone (`utter-tts serve --compat` adds utter's routes)."""

import sys

from utter_tts.server.app import app_from_args, serve
from utter_tts.server.settings import build_parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m utter_tts.server")
    args = parser.parse_args(argv)
    app, config = app_from_args(args, parser)
    return serve(app, config, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
