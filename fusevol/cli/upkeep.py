"""`fusevol gc` and `fusevol verify`: the store's safety net and its check."""

import click

from .. import errors
from .common import emit, human, json_option, open_service, open_store, quiet_option
from .group import command
from .progress import phases


@command()
@json_option
@quiet_option
@click.pass_context
def gc(ctx, as_json, quiet):
    """Free what nothing reaches and repair wrong reference counts.

    Reference counts free space at once already; gc is the safety net after
    a crash, a bug or a manual edit. Orphan files of mounted volumes are left
    to their workers. gc also compresses what was written since the last gc
    again, harder, lays its packs out again to fill their pages (tree
    objects grouped and compressed together), and, when no other process has the store open (no mounted
    volume, no `fusevol serve`), writes the store file again without the
    pages LMDB keeps free; else gives those pages' blocks back to the disk.
    A mounted volume's worker does the same but for the recount, by itself,
    once its volume has been quiet for a few seconds (FUSEVOL_IDLE_UPKEEP)."""
    with phases(quiet or as_json, in_bytes=False) as progress:
        report = open_service(ctx).gc(progress)
    lines = [
        f"freed     {human(report['stored_bytes_freed']):>12}  stored "
        f"({report['chunks_freed']} chunks, {report['objects_freed']} tree objects)",
        f"orphans   {report['orphans_purged']:>12}  purged",
        f"fixed     {len(report['counts_fixed']):>12}  reference counts",
        f"packs     {human(report['packs']['dead_bytes_freed']):>12}  dead space freed "
        f"({report['packs']['packs_rewritten']} rewritten, {report['packs']['packs_deleted']} deleted)",
    ]
    rec = report["recompressed"]
    lines.append(f"denser    {human(rec['stored_bytes_saved']):>12}  saved "
                 f"({rec['chunks_recompressed']} chunks compressed again)")
    dense = report.get("densified") or {}
    if dense.get("packs_rewritten"):
        lines.append(f"laid out  {dense['pages_freed']:>12}  pages fewer ({dense['packs_rewritten']} packs "
                     f"written again as {dense['packs_written']}, {dense['packs_compressed']} of tree "
                     "objects compressed whole)")
    f = report["file"]
    if f["rewritten"]:
        lines.append(f"file      {human(f['file_bytes_before'] - f['file_bytes_after']):>12}  smaller "
                     f"(written again: {human(f['file_bytes_after'])})")
    else:
        lines.append(f"file      {human(f['file_bytes_before']):>12}  not written again: {f['reason']}")
        tables = f.get("tables") or {}
        if tables:
            fewer = sum(t["leaf_pages_before"] - t["leaf_pages_after"] for t in tables.values())
            lines.append(f"tables    {fewer:>12}  pages fewer (written again in key order: "
                         f"{', '.join(sorted(tables))})")
        holes = f.get("holes") or {}
        if holes.get("punched"):
            lines.append(f"disk      {human(holes['disk_bytes_before'] - holes['disk_bytes_after']):>12}  "
                         f"given back ({holes['free_pages']} free pages punched out of the file)")
        elif holes.get("reason"):
            lines.append(f"disk      {'':>12}  free pages kept: {holes['reason']}")
    if report["packs"]["blobs_packed"]:
        lines.append(f"packed    {report['packs']['blobs_packed']:>12}  chunks and objects an older "
                     "fusevol kept alone")
    for fix in report["counts_fixed"]:
        kind = "chunk" if "chunk" in fix else "tree object"
        lines.append(f"  {kind} {fix.get('chunk') or fix.get('object')}: {fix['was']} -> {fix['now']}")
    if report["totals_fixed"]:
        lines.append(f"  store totals: {report['totals_fixed']['was']} -> {report['totals_fixed']['now']}")
    for fix in report["usage_fixed"]:
        lines.append(f"  volume {fix['volume']} usage: {fix['was']} -> {fix['now']}")
    for gone in report["missing"]:
        lines.append(f"  chunk {gone['chunk']} {gone['state']}: run fusevol verify")
    emit(report, as_json, "\n".join(lines))


@command()
@json_option
@quiet_option
@click.pass_context
def verify(ctx, as_json, quiet):
    """Re-hash every chunk and tree object and follow every reference;
    name the files that damage reaches. Exits non-zero on any problem."""
    from ..store import check

    store = open_store(ctx)
    with phases(quiet or as_json, in_bytes=False) as progress, store.read() as txn:
        report = check.verify(txn, progress)
    lines = []
    for p in report["problems"]:
        message = p["message"] + (" (fusevol gc repairs this)" if p.get("repair") == "gc" else "")
        lines.append(f"{p['where']}: {p['path']}: {message}" if p["path"] is not None
                     else f"{p['where']}: {message}")
    summary = (f"checked {report['chunks']} chunks, {report['objects']} tree objects, "
               f"{report['volumes']} volumes, {report['snapshots']} snapshots: "
               + ("ok" if report["ok"] else f"{len(report['problems'])} problem(s)"))
    emit(report, as_json, "\n".join(lines + [summary]))
    if not report["ok"]:
        ctx.exit(errors.StoreDamaged.exit_code)
