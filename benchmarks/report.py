"""Tables from the benchmark rows in results/: ``python -m benchmarks.report [--write]``.

For every results file (one machine each) and op, a markdown table per mode with each backend's
median time, its speedup over the reference timed in the same run, and the peak memory. With
``--write`` the tables replace the generated section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib

from benchmarks.common import RESULTS

README = pathlib.Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- BEGIN GENERATED TABLES -->", "<!-- END GENERATED TABLES -->"
SHAPE_KEYS = ("B", "K", "d")


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def op_table(machine: dict, rows: list[dict], op: str) -> str:
    """Markdown for one op on one machine: a table per mode."""
    by_mode: dict[str, dict[tuple, dict[str, dict]]] = collections.defaultdict(
        lambda: collections.defaultdict(dict)
    )
    backends: list[str] = []
    for row in rows:
        case = row["case"]
        if case["op"] != op:
            continue
        shape = tuple(case[k] for k in SHAPE_KEYS)
        by_mode[case["mode"]][shape][case["backend"]] = row
        if case["backend"] not in backends:
            backends.append(case["backend"])
    others = [b for b in backends if b != "reference"]
    out = [
        f"### `{op}` on {machine['device_name']} ({machine['device']}, torch {machine['torch']}, "
        f"triton {machine['triton']}, {machine['torch_threads']} threads, commit {machine['commit']}, "
        f"{machine['date']})",
        "",
        "Median ms (p20-p80 in the JSON); `x` = reference time / backend time, timed in the same run; "
        "peak = MiB allocated during one call beyond its inputs. `-` = not run (reference over its memory limit).",
    ]
    for mode in ("fwd", "bwd", "fwdbwd"):
        if mode not in by_mode:
            continue
        head = "| B | K | d | reference ms | ref peak MiB |"
        sep = "|---|---|---|---|---|"
        for b in others:
            head += f" {b} ms | {b} x | {b} peak MiB |"
            sep += "---|---|---|"
        out += ["", f"**{mode}**", "", head, sep]
        for shape in sorted(by_mode[mode]):
            cells = by_mode[mode][shape]
            ref = cells.get("reference")
            line = f"| {' | '.join(map(str, shape))} | "
            line += f"{ref['p50_ms']:.3f} | {_mib(ref['peak_bytes'])} |" if ref else "- | - |"
            for b in others:
                row = cells.get(b)
                if row is None:
                    line += " - | - | - |"
                    continue
                ratio = f"{ref['p50_ms'] / row['p50_ms']:.2f}" if ref else "-"
                line += f" {row['p50_ms']:.3f} | {ratio} | {_mib(row['peak_bytes'])} |"
            out.append(line)
    return "\n".join(out)


def train_table(machine: dict, rows: list[dict]) -> str:
    """Markdown for the train_update rows of one machine: one line per agent and mode."""
    rows = [r for r in rows if r["case"].get("op") == "train_update"]
    out = [
        f"### Training updates on {machine['device_name']} ({machine['device']}, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, commit {machine['commit']}, {machine['date']})",
        "",
        "B=256, 4x512, K=8, N=10, obs 28 / action 5. `x` = eager-reference time / this mode's, same run. "
        "Breakdown measured separately in the same run; GFLOP/s = model FLOPs per update / time, "
        "`% peak` of the 2048x512x512 GEMM peak measured in the same run (fp32, or bf16 for fused-bf16).",
        "",
        "| agent | mode | ms/update (p50) | updates/s | x eager-ref | x authors' JAX | rollouts ms | optimizer ms "
        "| rest ms | GFLOP/s | % peak | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda r, k: f"{r[k]:.2f}" if k in r else "-"
    for r in rows:
        c, b = r["case"], r.get("breakdown_ms")
        line = (
            f"| {c['agent']} | {c['mode']} | {r['p50_ms']:.1f} | {r['updates_per_s']:.2f} | "
            f"{fmt(r, 'speedup_vs_eager_reference')} | {fmt(r, 'speedup_vs_authors_jax')} |"
        )
        if b is None:  # the authors' JAX update: timed whole
            line += " - | - | - | - | - | - |"
        else:
            line += (
                f" {b['rollouts']:.1f} | {b['optimizer']:.1f} | {b['losses_backward_other']:.1f} | "
                f"{r['gflops_per_s']:.0f} | {100 * r['fraction_of_gemm_peak']:.0f} | {_mib(r['peak_bytes'])} |"
            )
        out.append(line)
    return "\n".join(out)


def multiseed_table(machine: dict, rows: list[dict]) -> str:
    """Markdown for the multiseed_step rows: stacked seeds against the same seeds updated one by one."""
    rows = sorted((r for r in rows if r["case"].get("op") == "multiseed_step"),
                  key=lambda r: (r["case"]["size"], r["case"].get("compile", False), r["case"]["seeds"], r["case"]["mode"]))  # fmt: skip
    out = [
        f"### Multi-seed updates on {machine['device_name']} ({machine['device']}, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, commit {machine['commit']}, {machine['date']})",
        "",
        "S seeds per step, stacked (one vmapped update) or sequential (S single agents, one after another), timed "
        "round-robin in one run. `x` = sequential time / stacked time.",
        "",
        "| size | compile | seeds | mode | ms/step (p50) | updates/s per seed | x |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["case"]
        size = f"B={c['B']}, {len(c['hidden'])}x{c['hidden'][0]}, K={c['K']}, N={c['N']}"
        out.append(
            f"| {size} | {c.get('compile', False)} | {c['seeds']} | {c['mode']} | {r['p50_ms']:.1f} | "
            f"{r['updates_per_s_per_seed']:.2f} | {r.get('speedup_vs_sequential', float('nan')):.2f} |"
        )
    return "\n".join(out)


def all_tables() -> str:
    parts = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if not data.get("rows") or "case" not in data["rows"][0]:
            continue
        ops = sorted({r["case"].get("op") for r in data["rows"] if "op" in r["case"] and "mode" in r["case"]})
        src = f"Source: `results/{path.name}`\n\n"
        if "train_update" in ops:
            parts.append(src + train_table(data["machine"], data["rows"]))
        if "multiseed_step" in ops:
            parts.append(src + multiseed_table(data["machine"], data["rows"]))
        for op in (o for o in ops if o not in ("train_update", "multiseed_step")):
            parts.append(f"Source: `results/{path.name}`\n\n" + op_table(data["machine"], data["rows"], op))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write", action="store_true", help="replace the generated section of benchmarks/README.md"
    )
    args = parser.parse_args()
    tables = all_tables()
    if not args.write:
        print(tables)
        return
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{README} lacks the {BEGIN} / {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{tables}\n{END}{tail}")
    print(f"wrote tables to {README}")


if __name__ == "__main__":
    main()
