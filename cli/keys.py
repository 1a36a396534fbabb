"""`diffq keys`: API keys and owners, managed directly in the database (an operator's commands)."""

import json
from typing import Annotated

import typer

# Run on the server side, against the database (like `diffq db`), not through the API.
keys_app = typer.Typer(
    help="API keys and webhook signing secrets (run where the database is reachable).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _limits(pairs: list[str]) -> dict[str, int | str]:
    from cli.client import CliError
    from core.quotas import KEY_LIMITS, key_limits_problem

    limits: dict[str, int | str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise CliError(f"--limit takes name=value, e.g. max_queued_jobs=100; got {pair!r}")
        limits[name] = int(value) if KEY_LIMITS.get(name) is int and value.isdigit() else value
    if problem := key_limits_problem(limits):
        raise CliError(problem)
    return limits


@keys_app.command("create")
def create(
    owner: Annotated[str, typer.Option(help="Who the key acts for (made if new).")],
    admin: Annotated[bool, typer.Option(help="Every owner's jobs, publishing models.")] = False,
    scopes: Annotated[
        list[str] | None,
        typer.Option("--scopes", help="read, submit, admin; repeatable (default read+submit)."),
    ] = None,
    limit: Annotated[
        list[str] | None,
        typer.Option(help="A quota for this key, name=value (max_queued_jobs=100, rate_limit=10/second)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A note to tell keys apart.")] = None,
) -> None:
    """Create an API key and print it. It is shown once: only its hash is kept."""
    from cli.client import CliError
    from core.auth import KeyProblem, Scope, create_key
    from core.db import db_session

    chosen = [part for item in scopes or [] for part in item.replace(",", " ").split()]
    chosen = chosen or list(Scope.DEFAULT)
    if admin and Scope.ADMIN not in chosen:
        chosen.append(Scope.ADMIN)
    limits = _limits(limit or [])
    try:
        with db_session() as session:
            row, key = create_key(session, owner, chosen, limits, name)
    except KeyProblem as error:
        raise CliError(str(error)) from None
    typer.echo(key)
    typer.echo(
        f"# key {row.prefix} for owner '{owner}', scopes {', '.join(row.scopes)}; shown once. "
        "Use it as: export DIFFQ_API_KEY=<key>",
        err=True,
    )


@keys_app.command("list")
def list_(owner: Annotated[str | None, typer.Option(help="Only this owner's keys.")] = None) -> None:
    """List keys (never the keys themselves): prefix, owner, scopes, limits, state."""
    from core.auth import list_keys
    from core.db import db_session

    with db_session() as session:
        rows = list_keys(session, owner)
        if rows:
            typer.echo("id  prefix  owner  scopes  state  limits (name)")
        for row in rows:
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            used = f"used {row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never used"
            limits = f" limits {json.dumps(row.limits)}" if row.limits else " default limits (DIFFQ_MAX_*)"
            note = f" ({row.name})" if row.name else ""
            typer.echo(
                f"{row.id}  {row.prefix}  {row.owner}  {','.join(row.scopes)}  {state}, {used}{limits}{note}"
            )
    if not rows:
        typer.echo("no keys; `diffq keys create --owner NAME` makes one", err=True)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id or prefix (`diffq keys list`).")],
) -> None:
    """Revoke a key: requests with it answer 401 from now on."""
    from cli.client import CliError
    from core.auth import revoke_key
    from core.db import db_session

    with db_session() as session:
        if not revoke_key(session, key_id):
            raise CliError(f"no active key with id or prefix {key_id!r} (`diffq keys list` lists them)")
    typer.echo(f"revoked {key_id}")


@keys_app.command("webhook-secret")
def keys_webhook_secret(
    owner: Annotated[str, typer.Option(help="The owner whose deliveries the secret signs.")],
    rotate: Annotated[
        bool, typer.Option(help="Make a new secret; deliveries not sent yet are signed with it.")
    ] = False,
) -> None:
    """Print an owner's webhook signing secret (`whsec_...`, for standardwebhooks' `Webhook(secret)`)."""
    from cli.client import CliError
    from core.auth import KeyProblem, webhook_secret
    from core.db import db_session

    try:
        with db_session() as session:
            secret = webhook_secret(session, owner, rotate=rotate)
    except KeyProblem as problem:
        raise CliError(str(problem)) from None
    typer.echo(secret)
