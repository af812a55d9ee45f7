"""`unetkit registry add | list | show | promote | rollback | diff | export | grant | policy`: the command-line layer over
`Registry` (cli.py mounts it; nothing in the library imports this module).

Every command takes `--registry` (a path or URL; default $UNETKIT_REGISTRY, else
./unetkit-registry/registry.db) and `--json` for machine-readable output. Errors are
`RegistryError`s: one line on stderr, exit status 2, or 3 for a promotion the gate refused (cli.main).
Stage options are choices of the stages `unetkit.config` names, checked at parse time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from unetkit.config import REGISTRY_ENV, REGISTRY_STORE_ENV, AddStage, RegistryStage, ServedStage

if TYPE_CHECKING:
    from unetkit.registry.registry import Registry

registry_app = typer.Typer(
    name="registry", no_args_is_help=True, rich_markup_mode=None,
    help="Versions of trained models: add artifacts, list and compare them, promote through "
    "candidate -> staging -> production behind a metrics gate, roll back.",
)

RegistryOpt = Annotated[str | None, typer.Option(
    "--registry", envvar=REGISTRY_ENV, help="Registry database: a path (registry.db) or URL (sqlite:///..., "
    "postgresql+psycopg://...).  [default: ./unetkit-registry/registry.db]")]
StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar=REGISTRY_STORE_ENV,
    help="Artifact folder; needed the first time a PostgreSQL registry is used (SQLite: blobs/ beside the file).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ByOpt = Annotated[str | None, typer.Option("--by", help="On whose behalf (recorded as claimed_by, beside the "
                                          "authenticated user: the database login, or the OS account).")]
TrustedKeysOpt = Annotated[str | None, typer.Option(  # also the predict/serve/verify option (cli.py)
    "--trusted-keys", help="Folder of trusted Ed25519 public keys (*.pub) or one .pub file: a signed artifact must be "
    "signed by one of them (a registry records the signer).")]
RequireSignatureOpt = Annotated[bool, typer.Option(
    "--require-signature", help="Refuse an artifact not signed by a trusted key (needs --trusted-keys).")]
ToleranceOpt = Annotated[list[str] | None, typer.Option(
    "--tolerance", help="How much worse a metric may be: 0.005 (every metric, the default) or METRIC=VALUE "
    "(one metric, e.g. hd95/vessel=2). Repeatable. Above the registry's maximum (registry policy) it counts "
    "as forcing the gate: needs --reason, recorded as forced.")]


@contextmanager
def _opened(location: str | None, store: str | None) -> Iterator[Registry]:
    from unetkit.registry.registry import Registry

    with Registry.open(location, store) as registry:
        yield registry


def _print(*renderables: Any) -> None:
    from rich.console import Console

    console = Console()
    for item in renderables:
        console.print(item)


def _json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@registry_app.command("add")
def add(
    artifact: Annotated[Path, typer.Argument(help="Model artifact (model.unetkit).")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the artifact's own name).")] = None,
    stage: Annotated[AddStage, typer.Option(help="Stage of the new version; staging or production are gated like promote.")] = "candidate",
    note: Annotated[str, typer.Option(help="Free text kept with the version.")] = "",
    git_commit: Annotated[str | None, typer.Option(help="Git commit the model was trained from "
                                                   "(default: the one the artifact records, if any).")] = None,
    force: Annotated[bool, typer.Option(help="With --stage: promote even if the gate refuses (needs --reason).")] = False,
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit trail).")] = "",
    tolerance: ToleranceOpt = None,
    trusted_keys: TrustedKeysOpt = None,
    require_signature: RequireSignatureOpt = False,
    by: ByOpt = None,
    registry: RegistryOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register an artifact as the next version of its model (stored by sha256; the same file twice is one version)."""
    from unetkit.registry.gate import parse_tolerances
    from unetkit.signing import TrustPolicy

    default, per_metric = parse_tolerances(tolerance or [])
    trust = TrustPolicy.load(trusted_keys, require_signature)
    with _opened(registry, store) as reg:
        result = reg.add(artifact, name=name, stage=stage, note=note, by=by, git_commit=git_commit, force=force,
                         reason=reason, tolerance=default, tolerances=per_metric, trust=trust)
    r = result.record
    if json_out:
        _json({"created": result.created, **r.to_dict()})
    elif result.created:
        signed = f", signed by {r.signer}" if r.signer else ""
        typer.echo(f"registered {r.ref} ({r.stage}), sha256 {r.sha256[:12]}{signed}, from {artifact}")
    else:
        typer.echo(f"already registered: {r.ref} ({r.stage}) has the same sha256 {r.sha256[:12]}")


@registry_app.command("list")
def list_versions(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    stage: Annotated[RegistryStage | None, typer.Option(help="Only versions in this stage.")] = None,
    registry: RegistryOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Registered versions with their stage, creation, sha256 and key metric."""
    from unetkit.registry.tables import versions_table

    with _opened(registry, store) as reg:
        records = reg.list(name, stage)
    if json_out:
        _json([r.to_dict() for r in records])
    else:
        _print(versions_table(records))


@registry_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION]; VERSION a number, latest, staging or production.")],
    registry: RegistryOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One version: metadata, metrics and its stage history."""
    from unetkit.registry.tables import version_tables

    with _opened(registry, store) as reg:
        record = reg.get(ref)
        events = reg.history(record.name, record.version)
        blob = str(reg.store.path(record.sha256))
    if json_out:
        _json({**record.to_dict(), "blob": blob, "events": [e.to_dict() for e in events]})
    else:
        _print(*version_tables(record, events))


@registry_app.command("promote")
def promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to promote.")],
    to: Annotated[ServedStage, typer.Option("--to", help="Stage to promote to.")],
    force: Annotated[bool, typer.Option(help="Promote even if the gate refuses (needs --reason).")] = False,
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit trail).")] = "",
    tolerance: ToleranceOpt = None,
    metric: Annotated[list[str] | None, typer.Option(help="Gate only on these metrics (repeatable; default: every "
                                                     "metric production has with a known direction).")] = None,
    trusted_keys: TrustedKeysOpt = None,
    require_signature: RequireSignatureOpt = False,
    by: ByOpt = None,
    registry: RegistryOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Move a version to staging or production if its validation metrics are no worse than production's
    (within the tolerance); the version it replaces is archived."""
    from unetkit.registry.gate import parse_tolerances
    from unetkit.registry.tables import gate_table
    from unetkit.signing import TrustPolicy

    default, per_metric = parse_tolerances(tolerance or [])
    trust = TrustPolicy.load(trusted_keys, require_signature)
    with _opened(registry, store) as reg:
        result = reg.promote(ref, to, force=force, reason=reason, by=by, tolerance=default, tolerances=per_metric,
                             only=metric or None, trust=trust)
    if json_out:
        _json({"promoted": result.record.to_dict(), "forced": result.forced, "gate": result.gate.to_dict(),
               "archived": result.superseded.ref if result.superseded else None})
        return
    if result.gate.checks:
        _print(gate_table(result.gate))
    archived = f"; {result.superseded.ref} archived" if result.superseded else ""
    forced = " (forced past the gate)" if result.forced else ""
    typer.echo(f"{result.record.ref} is now in {to}{forced}{archived}")


@registry_app.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit trail).")] = "",
    by: ByOpt = None,
    registry: RegistryOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Put the previous production version back in production; archive the current one."""
    with _opened(registry, store) as reg:
        result = reg.rollback(name, reason=reason, by=by)
    if json_out:
        _json({"restored": result.restored.to_dict(), "archived": result.archived.to_dict()})
    else:
        typer.echo(f"{result.restored.ref} is back in production; {result.archived.ref} archived")


@registry_app.command("diff")
def diff(
    a: Annotated[str, typer.Argument(help="NAME:VERSION (the base).")],
    b: Annotated[str, typer.Argument(help="NAME:VERSION compared with it.")],
    registry: RegistryOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """What changed from A to B: metrics with deltas, plan choices, data fingerprint, classes, calibration."""
    from unetkit.registry.tables import diff_tables

    with _opened(registry, store) as reg:
        result = reg.diff(a, b)
    if json_out:
        _json(result)
    else:
        _print(*diff_tables(result))


@registry_app.command("export")
def export(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION (or NAME:production, NAME:latest...).")],
    to: Annotated[str, typer.Option(
        "--to", metavar="mlflow[:URI]", help="Where: mlflow (URI default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
        "here) or mlflow:URI. Registers the artifact as a new version of an MLflow registered model: a pyfunc "
        "that runs unetkit's tiled predictor (docs/observability.md).")],
    name: Annotated[str | None, typer.Option(help="The MLflow registered model's name (default: the unetkit model's).")] = None,
    registry: RegistryOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register a version in another model registry (MLflow), so teams on its tools keep them."""
    from unetkit.training.tracking import parse_track

    _, uri = parse_track(to, "--to")
    from unetkit.registry.mlflow_model import export_version

    with _opened(registry, store) as reg:
        record = reg.get(ref)
        blob = reg.fetch(record)  # sha256 checked
        result = export_version(record, blob, uri, name)
    if json_out:
        _json({"registry_ref": record.ref, "sha256": record.sha256, "mlflow_model": result.name,
               "mlflow_version": result.version, "model_uri": result.model_uri, "run_id": result.run_id,
               "tracking_uri": result.tracking_uri})
    else:
        typer.echo(f"exported {record.ref} (sha256 {record.sha256[:12]}) to MLflow as {result.model_uri} "
                   f"at {result.tracking_uri} (run {result.run_id})")


@registry_app.command("grant")
def grant(
    user: Annotated[str, typer.Argument(help="An existing PostgreSQL login.")],
    role: Annotated[str, typer.Argument(help="viewer (read, serve), publisher (+ add), approver (+ promote, "
                                        "rollback, force).")],
    registry: RegistryOpt = None,
) -> None:
    """PostgreSQL: create the registry roles (idempotent) and make USER a member of ROLE (run as the owner)."""
    from unetkit.registry.db import Database
    from unetkit.registry.location import default_location
    from unetkit.registry.roles import grant_role

    db = Database(default_location(registry))
    try:
        typer.echo(f"{user} is now a member of {grant_role(db, user, role)}")
    finally:
        db.close()


@registry_app.command("policy")
def set_gate_policy(
    max_tolerance: Annotated[list[str] | None, typer.Option(
        "--max-tolerance", help="The most --tolerance may be before a promotion counts as forced: VALUE (every "
        "metric) or METRIC=VALUE. Repeatable; replaces the policy. Without it: show the policy.")] = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show or set the gate policy (setting it: the owner of the registry's tables)."""
    from unetkit.registry.db import Database
    from unetkit.registry.gate import parse_tolerances
    from unetkit.registry.location import default_location
    from unetkit.registry.roles import policy, set_policy

    db = Database(default_location(registry), read_only=not max_tolerance)
    try:
        if max_tolerance:
            default, per_metric = parse_tolerances(max_tolerance, default=None)
            result = set_policy(db, {**({"*": default} if default is not None else {}), **per_metric})
        else:
            with db.read() as conn:
                result = policy(conn)
    finally:
        db.close()
    if json_out:
        _json(result)
    else:
        typer.echo("max tolerance: " + ", ".join(f"{k}={v:g}" for k, v in result["max_tolerance"].items()))
