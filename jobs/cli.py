"""The `landmark` command: one entry point for every job. Ray is imported only by the jobs that use it."""

from __future__ import annotations

import sys

from landmark_core.closed_pipe import quiet_on_closed_pipe

COMMANDS = {
    "predict": ("landmark_core.predict_cli", "tag photos on this machine (no Ray)"),
    "train": ("jobs.train", "train a model on Ray Train"),
    "tag": ("jobs.tag", "the nightly tag job on Ray Data: photos -> the Delta tag table"),
    "eval": ("jobs.eval", "open-world numbers of a model on labelled photos (right, abstained, wrong tags)"),
    "query": ("jobs.query", "read the tags with SQL (committed runs, latest per photo, history)"),
    "data": ("jobs.data", "fetch or generate datasets"),
    "bench": ("jobs.bench", "measure throughput side by side"),
    "report": ("jobs.report", "HTML report of a tags location"),
    "store": ("jobs.store", "the tag store's Delta table: history, optimize, vacuum, migrate"),
    "serve": ("jobs.serve", "the app: the model over HTTP on Ray Serve, with an upload page"),
    "catalog": ("jobs.catalog", "enroll, remove or list landmarks without retraining"),
    "demo": ("jobs.demo", "the whole story on this machine"),
}


@quiet_on_closed_pipe  # the command list too; each command's own main has it as well
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
        print(
            "usage: landmark COMMAND [ARGS...]\n\ncommands:\n"
            + "\n".join(lines)
            + "\n\n`landmark COMMAND --help` for each command's flags.",
            file=sys.stdout if argv else sys.stderr,
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(f"landmark: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
