"""User-facing errors: the CLI prints ``str(err)`` as one line instead of a traceback."""


class RecsysError(Exception):
    """Base of every user-facing error; its str is always a single readable line."""

    def __str__(self) -> str:
        # Exception.__str__ directly, so KeyError-derived subclasses do not repr-quote the message.
        return " ".join(Exception.__str__(self).splitlines())


class DataFormatError(RecsysError):
    """Input data is malformed or does not match the canonical schema."""


class MissingStepError(RecsysError):
    """A step was run out of order; the message names the step to run first."""


class DownloadError(RecsysError):
    """A remote artefact could not be fetched or failed verification."""


class ConfigError(RecsysError):
    """A setting is missing, unknown or out of range."""


class PromotionRefused(RecsysError):
    """A model was not promoted because it failed a promotion gate."""


def one_line(e: BaseException, *, last: bool = False, typed: bool = False, limit: int = 200) -> str:
    """An exception as one bounded line for a response or a log (never a traceback). `last`: the final line, where
    Ray puts a remote failure's own message under its traceback; `typed`: prefixed with the exception's type."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    text = (lines[-1] if last else lines[0]).strip() if lines else ""
    if typed:
        return f"{type(e).__name__}: {text}"[:limit]
    return (text or type(e).__name__)[:limit]
