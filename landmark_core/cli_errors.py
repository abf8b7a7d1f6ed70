"""A bad command-line argument told in two lines, with the flag a misspelt one is closest to: every command's
parser (the jobs' runner and `landmark predict`) goes through ``brief_errors``."""

from __future__ import annotations

import argparse


def brief_errors(parser: argparse.ArgumentParser, argv: list[str] = ()) -> None:
    """A bad argument is told in two lines, the error and where the flags are listed, not after argparse's usage
    line, which for a job of 40 flags fills the screen above the one line that matters."""

    def error(message: str, p: argparse.ArgumentParser = parser):
        if message.startswith("unrecognized arguments: "):  # said by the top parser: name the subcommand's
            p = _named_in(p, argv)
        hint = _did_you_mean(message, p, argv)
        p.exit(2, f"{p.prog}: error: {message}{hint}\n({p.prog} --help lists its flags)\n")

    parser.error = error
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                brief_errors(sub, argv)


def _named_in(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)command ``argv`` chooses (`landmark data split ...`: split's parser), the parser itself if none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = next((action.choices[a] for a in argv if a in action.choices), None)
            return _named_in(chosen, argv) if chosen else parser
    return parser


def _did_you_mean(message: str, parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """The flag each misspelt one is closest to, among those of the command and of the subcommand ``argv`` names
    (`--negatvies`: did you mean --negatives?): for argparse's "unrecognized arguments", and for its "required"
    error, which argparse gives first when the misspelt flag is a required one (`--outptu X`: --output missing)."""
    import difflib

    flags, todo = set(), [parser]
    while todo:
        for action in todo.pop()._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):  # the chosen one's, not its siblings'
                todo += [action.choices[a] for a in argv if a in action.choices][:1]
    guesses = []
    for name in _unknown_flags(message, flags, argv):
        if close := difflib.get_close_matches(name, sorted(flags), n=1, cutoff=0.75):
            guesses.append(f"{name}: did you mean {close[0]}?")
    return f" ({'; '.join(guesses)})" if guesses else ""


def _unknown_flags(message: str, flags: set[str], argv: list[str]) -> list[str]:
    """The --flags the error is about that the parser does not know (an unambiguous prefix of one is known)."""
    if message.startswith("unrecognized arguments: "):
        given = message.removeprefix("unrecognized arguments: ").split()
    elif message.startswith("the following arguments are required: "):
        given = argv
    else:
        return []
    names = (a.split("=", 1)[0] for a in given if a.startswith("--") and a != "--")
    return list(dict.fromkeys(n for n in names if not any(f.startswith(n) for f in flags)))
