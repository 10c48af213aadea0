"""`m2a redteam run | list | report | gate | diff | garak | import-garak`: attack a served model
through the gateway and keep what happened.

`run` is a client of the gateway (HTTP, the caller's key; nothing of the gateway is imported): the
probe packs of ``m2a.redteam``, judged by its detectors, stored in ``$M2A_HOME/redteam.db`` (``--db``
elsewhere). The guardrails in force are the gateway's: ``--profile`` attacks as a team with that
profile attached (``redteam/under_profile.py``); ``--label`` labels the run so
that `diff` can put, say, ``none`` next to ``default``; ``--system-prompt`` (or
``--system-prompt-file``) attacks as an application with that system prompt (an agent's: `m2a agents
test` passes its manifest's), its sha256 kept with the run. `gate` exits 1 when a category's attack
success rate is over its threshold (0 otherwise, 2 on bad input).

The key is ``--key``, else ``$M2A_API_KEY``, else the admin key `m2a up` uses (``$M2A_ADMIN_KEY`` or
``$M2A_HOME/admin.key``); the URL is ``--url``, else the configured gateway address.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from m2a.cli.identity_cmd import ConfigOpt, err, out
from m2a.cli.metal_cmd import admin_key_of
from m2a.cli.metal_cmd import gateway_url as configured_gateway
from m2a.config import ConfigError, Settings, load_settings

redteam_app = typer.Typer(
    no_args_is_help=True,
    help="Red teaming: attack a served model through the gateway, report, gate, compare runs.",
)
DbOpt = Annotated[Path | None, typer.Option("--db", help="Results file (default $M2A_HOME/redteam.db).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
UrlOpt = Annotated[
    str | None, typer.Option("--url", help="The gateway's OpenAI base URL (default: the configured one).")
]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", help="API key (default $M2A_API_KEY, else the admin key).", show_default=False),
]
LabelOpt = Annotated[
    str, typer.Option("--label", help="A label recorded on the run, for list and diff (default: --profile).")
]
GuardOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Attack as a team with this guardrail profile (off, default, strict, yours): with the admin "
        "key, team redteam-<profile> gets the model and the profile attached, and a key for this run "
        "(revoked after). Without it, the key's own profile is in force.",
    ),
]


def table(*headers: str, title: str | None = None) -> Table:
    """A compact table (fits 80 columns for the built-in categories); cells do not wrap but the last."""
    cols = [Column(h, no_wrap=i < len(headers) - 1) for i, h in enumerate(headers)]
    return Table(*cols, title=title, box=box.SIMPLE_HEAD, pad_edge=False)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc


def _store(settings: Settings, db: Path | None):  # type: ignore[no-untyped-def]
    from m2a.redteam.results import Store, default_path

    return Store(db or default_path(settings.home))


def gateway_url(settings: Settings, url: str | None) -> str:
    """``--url``, else the configured gateway's OpenAI base URL."""
    return url.rstrip("/") if url else f"{configured_gateway(settings)}/v1"


def gateway_key(settings: Settings, key: str | None) -> str | None:
    """``--key``, ``$M2A_API_KEY``, else the admin key (``$M2A_ADMIN_KEY`` or the one `m2a up` keeps)."""
    return key or os.environ.get("M2A_API_KEY") or admin_key_of(settings)


def _ref(store: Any, ref: str) -> Any:
    from m2a.redteam.results import NoSuchRun

    try:
        return store.run(ref)
    except NoSuchRun as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _stats_table(stats: list[Any], title: str | None = None) -> Table:
    """Per category: judged attempts, successes, blocked, errors, and the rate with its 95% interval
    (resisted is judged - success - blocked); compact enough for an 80-column terminal."""
    from m2a.redteam.score import overall

    t = table("category", "OWASP", "judged", "success", "blocked", "error", "ASR (95% CI)", title=title)
    for s in [*stats, overall(stats)]:
        lo, hi = s.ci
        rate = f"{_pct(s.rate)} ({100 * lo:.0f}–{100 * hi:.0f}%)" if s.judged else "n/a"
        name = s.category if s.category != "all" else "[bold]all[/]"
        owasp = s.owasp.removesuffix(":2025")  # every built-in id is of the 2025 list
        t.add_row(name, owasp, str(s.judged), str(s.success), str(s.blocked), str(s.error), rate)
    return t


def _print_report_json(store: Any, run: Any) -> None:
    from m2a.redteam.report import build, to_json

    print(to_json(build(store, run)))


@contextlib.contextmanager
def _attacker_key(base_url: str, key: str | None, model: str, guardrails: str | None) -> Iterator[str | None]:
    """The key to attack with: ``key``, or with ``--profile`` a run key of a team with that guardrail
    profile (revoked on leaving); checked against the gateway first (exit 1 if it cannot be used)."""
    from m2a.redteam.runner import TargetError, check_target
    from m2a.redteam.under_profile import team_key

    with contextlib.ExitStack() as scope:
        try:
            if guardrails:
                key = scope.enter_context(team_key(base_url, key, model, guardrails))
            asyncio.run(check_target(base_url, key, model))
        except TargetError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from exc
        yield key


@redteam_app.command("run")
def run_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="The served model to attack.")],
    url: UrlOpt = None,
    key: KeyOpt = None,
    category: Annotated[
        list[str] | None, typer.Option("--category", help="Only this category (repeatable; default all).")
    ] = None,
    guardrails: GuardOpt = None,
    profile: LabelOpt = "",
    concurrency: Annotated[int, typer.Option(min=1, help="Attempts in flight at once.")] = 4,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many probes per category.")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds per attempt (no retries).")] = 120.0,
    seed: Annotated[int | None, typer.Option(help="Seed of the planted values (default: random).")] = None,
    pack: Annotated[
        list[Path] | None, typer.Option("--pack", help="Probe pack YAML file instead of the built-in ones.")
    ] = None,
    system_prompt: Annotated[
        str | None, typer.Option("--system-prompt", help="Attack as an application with this system prompt.")
    ] = None,
    system_prompt_file: Annotated[
        Path | None, typer.Option("--system-prompt-file", help="The system prompt, from a file.")
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Attack MODEL through the gateway with the probe packs; store and summarise the results."""
    from m2a.redteam.probes import PackError, load, select

    settings = _settings(config)
    try:
        probes, cats = load(pack)
        chosen = select(probes, category, limit)
    except PackError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if not chosen:
        err.print("[red]error:[/] no probes to run")
        raise typer.Exit(2)
    if system_prompt_file is not None:
        if system_prompt is not None:
            raise typer.BadParameter("give --system-prompt or --system-prompt-file, not both")
        try:
            system_prompt = system_prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            err.print(f"[red]error:[/] cannot read {escape(str(system_prompt_file))}: {escape(str(exc))}")
            raise typer.Exit(2) from exc
    base_url = gateway_url(settings, url)
    profile = profile or guardrails or ""
    with _attacker_key(base_url, gateway_key(settings, key), model, guardrails) as api_key:
        _attack(settings, model, base_url, api_key, chosen, cats, profile, concurrency, timeout, seed, pack,
                db, as_json, system_prompt)  # fmt: skip


def _attack(
    settings: Settings, model: str, base_url: str, api_key: str | None, chosen: list[Any], cats: Any,
    profile: str, concurrency: int, timeout: float, seed: int | None, pack: list[Path] | None,
    db: Path | None, as_json: bool, system_prompt: str | None = None,
) -> Any:  # fmt: skip
    """Run the chosen probes, store every attempt as it ends, and print the summary; the stored run.
    ``system_prompt`` opens every attempt's system message (its sha256 goes in the run's meta)."""
    from m2a.redteam.probes import CATEGORY_ORDER
    from m2a.redteam.runner import run_probes
    from m2a.redteam.score import Detectors, tally

    seed = secrets.randbelow(2**31) if seed is None else seed
    rank = {c: i for i, c in enumerate(CATEGORY_ORDER)}
    chosen.sort(key=lambda p: rank.get(p.category, len(rank)))  # stable: pack order within a category
    names = list(dict.fromkeys(p.category for p in chosen))
    detectors = Detectors()
    meta = {
        "seed": seed,
        "concurrency": concurrency,
        "timeout_s": timeout,
        "probes": len(chosen),
        "packs": [str(p) for p in pack] if pack else "built-in",
    }
    if system_prompt:
        meta["system_prompt_sha256"] = hashlib.sha256(system_prompt.encode()).hexdigest()
    store = _store(settings, db)
    run_id = store.start_run(model, base_url, profile, "m2a", names, meta)
    err.print(
        f"red team run {run_id}: {len(chosen)} probes in {len(names)} categories against "
        f"{escape(model)} at {escape(base_url)}",
        highlight=False,
    )
    hits = {"success": 0, "blocked": 0, "error": 0}
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tally]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = progress.add_task("attacking", total=len(chosen), tally="")

    def done(att: Any) -> None:
        store.add_attempts(run_id, [att.row()])
        o = att.judgement.outcome
        if o in hits:
            hits[o] += 1
        progress.update(
            task,
            advance=1,
            description=att.probe.category,
            tally=f"success {hits['success']}  blocked {hits['blocked']}  error {hits['error']}",
        )

    interrupted = False
    try:
        with progress:
            asyncio.run(
                run_probes(
                    chosen,
                    base_url=base_url,
                    key=api_key,
                    model=model,
                    seed=seed,
                    concurrency=concurrency,
                    timeout=timeout,
                    detectors=detectors,
                    on_done=done,
                    system_prompt=system_prompt,
                )
            )
    except KeyboardInterrupt:
        interrupted = True
    finish: dict[str, Any] = {"missing_detectors": sorted(detectors.missing)}
    if interrupted:
        finish["interrupted"] = True
    run = store.finish_run(run_id, finish)
    if detectors.missing:
        err.print(
            f"[yellow]note:[/] detectors not available, their rules were skipped: "
            f"{', '.join(sorted(detectors.missing))}"
        )
    if as_json:
        _print_report_json(store, run)
    else:
        stats = tally(store.attempts(run_id), names)
        for s in stats:
            s.owasp = s.owasp or (cats[s.category].owasp if s.category in cats else "")
        out.print(_stats_table(stats, title=f"red team run {run_id}: {model}"))
        out.print(
            f"stored in {escape(str(store.path))}; `m2a redteam report {run_id}` for examples, "
            f"`m2a redteam gate {run_id}` to check thresholds",
            highlight=False,
        )
    store.close()
    if interrupted:
        raise typer.Exit(130)
    return run


@redteam_app.command("list")
def list_cmd(
    limit: Annotated[int, typer.Option(min=1, help="How many runs.")] = 20,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Stored runs, newest first."""
    import json

    store = _store(_settings(config), db)
    runs = store.runs(limit)
    store.close()
    if as_json:
        print(json.dumps([r.as_dict() for r in runs], indent=2, default=str))
        return
    tb = table("id", "started", "model", "profile", "source", "attempts", "success", "error", "ASR")
    for r in runs:
        t = r.totals
        judged = sum(t.get(o, 0) for o in ("success", "resisted", "blocked"))
        rate = t.get("success", 0) / judged if judged else None
        tb.add_row(
            str(r.id),
            r.started_at.strftime("%m-%d %H:%M"),
            r.model,
            r.profile,
            r.source,
            str(sum(t.values())),
            str(t.get("success", 0)),
            str(t.get("error", 0)),
            _pct(rate),
        )
    out.print(tb)


@redteam_app.command("report")
def report_cmd(
    run: Annotated[str, typer.Argument(help="A run id, or 'last'.")],
    fmt: Annotated[str, typer.Option("--format", help="md, json or html.")] = "md",
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write here (default: stdout).")] = None,
    examples: Annotated[int, typer.Option(min=0, help="Successful examples per category.")] = 3,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A run's attack success rates per category (with 95% intervals) and example attempts."""
    from m2a.redteam.report import build, render

    if fmt not in ("md", "json", "html"):
        raise typer.BadParameter("--format must be md, json or html")
    store = _store(_settings(config), db)
    text = render(build(store, _ref(store, run), examples), fmt)
    store.close()
    if output is None:
        print(text, end="")
    else:
        output.write_text(text)
        err.print(f"wrote {escape(str(output))}")


@redteam_app.command("gate")
def gate_cmd(
    run: Annotated[str, typer.Argument(help="A run id, or 'last'.")],
    thresholds: Annotated[
        Path | None, typer.Option("--thresholds", help="YAML file of thresholds per category.")
    ] = None,
    max_rate: Annotated[
        list[str] | None,
        typer.Option("--max", help="CATEGORY=RATE, e.g. jailbreak=0.1 or *=20% (repeatable)."),
    ] = None,
    require: Annotated[
        list[str] | None, typer.Option("--require", help="A category that must be in the run (repeatable).")
    ] = None,
    use_upper: Annotated[
        bool, typer.Option("--use-upper", help="Compare the upper end of the 95% interval, not the rate.")
    ] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Exit 1 when a category's attack success rate is over its threshold, 0 when all are within."""
    import json

    from m2a.redteam.gate import GateConfigError, Policy, evaluate
    from m2a.redteam.score import tally

    policy = Policy()
    try:
        if thresholds is not None:
            policy.update_from_file(thresholds)
        policy.update_from_options(max_rate or [])
    except GateConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    policy.require += list(require or [])
    policy.use_upper = policy.use_upper or use_upper
    store = _store(_settings(config), db)
    r = _ref(store, run)
    stats = tally(store.attempts(r.id), r.categories)
    store.close()
    passed, verdicts = evaluate(stats, policy)
    if as_json:
        print(
            json.dumps({"run": r.id, "passed": passed, "verdicts": [v.as_dict() for v in verdicts]}, indent=2)
        )
    else:
        title = f"gate of red team run {r.id} ({r.model}, profile {r.profile or '-'})"
        t = table("category", "verdict", "threshold", "judged", "error", "why", title=title)
        colour = {"pass": "green", "fail": "red", "not run": "dim"}
        for v in verdicts:
            verdict = f"[{colour[v.verdict]}]{v.verdict}[/]"
            t.add_row(v.category, verdict, _pct(v.limit), str(v.judged), str(v.errors), v.reason)
        out.print(t)
        out.print("[green]gate passed[/]" if passed else "[red]gate failed[/]")
    raise typer.Exit(0 if passed else 1)


@redteam_app.command("diff")
def diff_cmd(
    a: Annotated[str, typer.Argument(help="The first run (id or 'last'), e.g. guardrails off.")],
    b: Annotated[str, typer.Argument(help="The second run, e.g. guardrails on.")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Two runs' attack success rates per category side by side, and the change from A to B."""
    import json

    from m2a.redteam.gate import diff
    from m2a.redteam.score import tally

    store = _store(_settings(config), db)
    ra, rb = _ref(store, a), _ref(store, b)
    changes = diff(tally(store.attempts(ra.id), ra.categories), tally(store.attempts(rb.id), rb.categories))
    store.close()
    if as_json:
        print(
            json.dumps(
                {"a": ra.as_dict(), "b": rb.as_dict(), "changes": [c.as_dict() for c in changes]},
                indent=2,
                default=str,
            )
        )
        return
    la, lb = f"A: run {ra.id} ({ra.profile or '-'})", f"B: run {rb.id} ({rb.profile or '-'})"
    title = f"{ra.model} vs {rb.model}" if ra.model != rb.model else ra.model
    t = table("category", la, lb, "change", "reading", title=title)
    for c in changes:
        ch = "n/a" if c.change is None else f"{100 * c.change:+.1f} pts"

        def cell(st: Any) -> str:
            blocked = f", {st.blocked} blocked" if st.blocked else ""
            return f"{_pct(st.rate)} ({st.success}/{st.judged}{blocked})"

        t.add_row(c.category, cell(c.a), cell(c.b), ch, c.reading)
    out.print(t)
    out.print("[dim]reading: lower/higher when the two 95% intervals do not overlap[/]")


def _import(
    store: Any, imported: Any, *, model: str, base_url: str, profile: str, meta: dict[str, Any]
) -> Any:
    run_id = store.start_run(
        model, base_url, profile, "garak", imported.categories, {**imported.meta, **meta}
    )
    store.add_attempts(run_id, imported.attempts)
    store.add_detector_evals(run_id, imported.evals)
    return store.finish_run(run_id)


def _summarise_import(store: Any, run: Any, imported: Any, as_json: bool) -> None:
    from m2a.redteam.score import tally

    if as_json:
        _print_report_json(store, run)
        return
    out.print(
        _stats_table(tally(store.attempts(run.id), run.categories), title=f"red team run {run.id} (garak)")
    )
    if imported.meta.get("disagreements"):
        err.print(
            "[yellow]note:[/] garak's per-detector counts differ from the attempts for: "
            + "; ".join(imported.meta["disagreements"][:5])
        )
    out.print(f"stored in {escape(str(store.path))}; `m2a redteam report {run.id}`", highlight=False)


@redteam_app.command("import-garak")
def import_garak_cmd(
    report: Annotated[Path, typer.Argument(help="A garak report (garak.<run>.report.jsonl).")],
    model: Annotated[
        str | None, typer.Option("--model", help="Model label (default: garak's target).")
    ] = None,
    profile: LabelOpt = "",
    url: Annotated[str, typer.Option("--url", help="Gateway label recorded on the run.")] = "",
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Import a garak report JSONL as a run (garak need not be installed)."""
    from m2a.redteam.garak import GarakReportError, parse_report

    try:
        imported = parse_report(report)
    except GarakReportError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    label = model or imported.meta.get("target_name") or imported.meta.get("model_name") or "unknown"
    store = _store(_settings(config), db)
    run = _import(
        store,
        imported,
        model=str(label),
        base_url=url,
        profile=profile,
        meta={"report": str(report.resolve())},
    )
    _summarise_import(store, run, imported, as_json)
    store.close()


@redteam_app.command("garak")
def garak_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="The served model to attack.")],
    probes: Annotated[
        list[str] | None,
        typer.Option(
            "--probes",
            help="garak probes, comma-separated or repeated (default: offline probes with string detectors).",
        ),
    ] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
    guardrails: GuardOpt = None,
    profile: LabelOpt = "",
    garak_python: Annotated[
        Path | None,
        typer.Option(
            "--garak-python", help="Python of garak's environment (default $M2A_HOME/garak-venv/bin/python)."
        ),
    ] = None,
    generations: Annotated[int, typer.Option(min=1, help="Answers per prompt.")] = 1,
    max_prompts: Annotated[int, typer.Option(min=1, help="At most this many prompts per probe.")] = 25,
    parallel: Annotated[int, typer.Option(min=1, help="garak's parallel attempts.")] = 1,
    seed: Annotated[int | None, typer.Option(help="garak's seed.")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Run garak (in its own environment) against MODEL through the gateway and import its report."""
    from m2a.redteam import garak

    settings = _settings(config)
    python = garak_python or garak.default_python(settings.home)
    if not python.exists():
        err.print(
            f"[red]error:[/] no garak environment at {escape(str(python))}. Create one with:\n"
            f"  {escape(garak.install_hint(settings.home))}\nor pass --garak-python."
        )
        raise typer.Exit(2)
    chosen = [
        p.strip() for item in (probes or list(garak.DEFAULT_PROBES)) for p in item.split(",") if p.strip()
    ]
    base_url = gateway_url(settings, url)
    profile = profile or guardrails or ""
    with _attacker_key(base_url, gateway_key(settings, key), model, guardrails) as api_key:
        _garak(settings, python, chosen, model, base_url, api_key, profile, generations, max_prompts,
               parallel, seed, db, as_json)  # fmt: skip


def _garak(
    settings: Settings, python: Path, chosen: list[str], model: str, base_url: str, api_key: str | None,
    profile: str, generations: int, max_prompts: int, parallel: int, seed: int | None, db: Path | None,
    as_json: bool,
) -> None:  # fmt: skip
    """garak's run through the gateway with ``api_key``, then its report imported."""
    from m2a.redteam import garak

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = settings.home / "garak-runs" / stamp
    prefix = f"m2a-{stamp}"
    cfg = garak.write_config(
        folder,
        base_url=base_url,
        model=model,
        prefix=prefix,
        generations=generations,
        max_prompts=max_prompts,
        seed=seed,
    )
    argv = garak.command(python, cfg, chosen, parallel)
    err.print(f"running garak: {escape(' '.join(argv))}", highlight=False)
    rc = subprocess.run(argv, env=garak.child_env(api_key), cwd=folder, check=False).returncode
    path = garak.report_path(folder, prefix)
    if not path.is_file():
        err.print(
            f"[red]error:[/] garak exited with {rc} and wrote no report ({escape(str(path))} is missing)"
        )
        raise typer.Exit(1)
    if rc != 0:
        err.print(f"[yellow]note:[/] garak exited with {rc}; importing what its report holds")
    try:
        imported = garak.parse_report(path)
    except garak.GarakReportError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    store = _store(settings, db)
    run = _import(
        store,
        imported,
        model=model,
        base_url=base_url,
        profile=profile,
        meta={"report": str(path), "garak_exit": rc, "probes": chosen},
    )
    _summarise_import(store, run, imported, as_json)
    store.close()
    if rc != 0:
        raise typer.Exit(1)
