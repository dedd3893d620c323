"""Credentials from mounted files: the `<NAME>_FILE` convention of the Postgres/MinIO images, for our processes.

Why: a Secret mounted as a file stays out of the pod spec's env (not shown by `kubectl describe`, not inherited
by every tool in the image, rotatable without a new pod spec). The chart sets e.g.
`AWS_ACCESS_KEY_ID_FILE=/etc/recsys-secrets/object-store/AWS_ACCESS_KEY_ID`; this module turns that into the
variable the client libraries read (boto3, pyarrow's S3, libpq's PGPASSWORD). `load_settings` applies it in every
recsys process (Serve replicas, Ray Train workers, the CLI); `python -m core.secret_files CMD ...` applies it and
then execs a program that is not ours (`mlflow server`, `feast serve`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from core.errors import ConfigError

SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "REDIS_PASSWORD")


def load_secret_files(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set each SECRET_VARS name from its `<NAME>_FILE`; an explicitly set variable wins. Returns the names set."""
    env = os.environ if environ is None else environ
    loaded = []
    for name in SECRET_VARS:
        path = env.get(f"{name}_FILE")
        if not path or env.get(name):
            continue
        try:
            value = Path(path).read_text().strip()
        except OSError as e:
            raise ConfigError(f"{name}_FILE={path}: cannot read it ({e.strerror})") from e
        if not value:
            raise ConfigError(f"{name}_FILE={path}: the file is empty")
        env[name] = value
        loaded.append(name)
    return loaded


def main(argv: list[str] | None = None) -> None:
    """`python -m core.secret_files CMD [ARG...]`: load the secret files, then exec CMD (exit 2 on a bad file)."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.exit("usage: python -m core.secret_files CMD [ARG...]")
    try:
        load_secret_files()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()
