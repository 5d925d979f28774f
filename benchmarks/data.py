"""Data benchmark: ``calm tokenize`` on a synthetic corpus of >= 1 GB against a bare loop over
``tokenizers``' ``encode_batch``, both on the same text and cores in one run.

Targets (issue 22): pipeline throughput >= 0.9x the bare loop's (overhead <= 10%); peak RSS of
the whole ``calm tokenize`` command (its worker processes included) < 1 GB, and within 10% of
its value at 1/10 of the corpus size.

The corpus is the bundled WikiText-103 articles, repeated (each copy's documents get a numbered
first line, so no two documents are equal) into a ``.jsonl`` file in a temporary directory. The
tokenizer is fixed: a byte-level BPE of 4096 ids trained on the bundled articles. Each side runs
as its own process, alternately, ``--repeats`` times, and the best wall time of each counts;
CPU seconds (user + system, worker processes included) are reported beside it. ``calm tokenize``
calls ``encode_batch_fast`` where ``tokenizers`` has it (the same ids, no character offsets), so
a bare loop over that call runs too: against it, ``overhead_ratio`` is the pipeline's own cost.
Peak RSS is the largest sum, over the process tree, of each process's proportional resident
memory (PSS), sampled every 50 ms.

Usage:
    python benchmarks/data.py --save                # 1 GiB corpus, all cores; results/data.json
    python benchmarks/data.py --size-mb 64 --repeats 1 --json OUT.json
    python benchmarks/run.py --report-only          # docs/benchmarks.md with the saved figures
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

from calm_core.corpus import load_bundled_corpus  # noqa: E402
from calm_core.data import Tokenizer  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402

from benchmarks.timing import cpu_model  # noqa: E402

VOCAB = 4096
RESULTS = ROOT / "benchmarks" / "results" / "data.json"
SAMPLE_S = 0.05

# the baseline: read the same file, batch the same way, encode on every core, keep nothing;
# argv[3] names the call: encode_batch (the baseline) or encode_batch_fast (what
# calm tokenize calls where tokenizers has it: the same ids without character offsets)
BARE_LOOP = """
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
encode = getattr(tok, sys.argv[3])
batch, chars, tokens = [], 0, 0
def flush():
    global batch, chars, tokens
    tokens += sum(len(e.ids) for e in encode(batch, add_special_tokens=False))
    batch, chars = [], 0
with open(sys.argv[2], "rb") as fh:
    for line in fh:
        text = json.loads(line)["text"]
        batch.append(text)
        chars += len(text)
        if chars >= 1 << 20 or len(batch) >= 4096:
            flush()
if batch:
    flush()
print(tokens)
"""


def write_corpus(path: Path, size_bytes: int) -> int:
    """Repeat the bundled articles into ``path`` until it holds ``size_bytes``; documents."""
    articles = [d.text for d in load_bundled_corpus()]
    written = docs = copy = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < size_bytes:
            for i, text in enumerate(articles):
                line = json.dumps({"text": f" = Copy {copy} of article {i} = \n{text}"}) + "\n"
                fh.write(line)
                written += len(line.encode("utf-8"))
                docs += 1
                if written >= size_bytes:
                    break
            copy += 1
    return docs


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (0 once it has exited).

    Each process counts its proportional share (PSS) of pages it shares with others: forked
    workers share the parent's imports, and the sum of plain RSS would count those once per
    process, more than the machine ever holds.
    """
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
        todo.extend(int(c) for c in children)
    return total


def _children_cpu() -> float:
    # user + system seconds of every finished child and the descendants it waited for
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall seconds, CPU seconds and peak process-tree RSS of ``cmd`` (which must succeed)."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(SAMPLE_S)
    seconds = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()[-3000:]}")
    return {
        "seconds": seconds,
        "cpu_seconds": _children_cpu() - cpu0,
        "peak_rss_bytes": peak,
        "stdout": out.decode().strip(),
    }


def tokenize_cmd(corpus: Path, tokenizer: Path, out: Path, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "calm_core.cli", "tokenize", str(corpus), "--out", str(out),
        "--tokenizer", str(tokenizer), "--workers", str(workers), "--overwrite", "--json",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024, help="corpus size in MiB (1024)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs of each side")
    parser.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument(
        "--save", action="store_true", help=f"write them to {RESULTS.relative_to(ROOT)} too"
    )
    args = parser.parse_args(argv)
    command = shlex.join(
        ["python", "benchmarks/data.py", *(sys.argv[1:] if argv is None else argv)]
    )
    machine = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    with tempfile.TemporaryDirectory(prefix="calm-bench-data-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        tok_dir = work / "tokenizer"
        Tokenizer.train_bpe((d.text for d in load_bundled_corpus()), VOCAB).save(tok_dir)
        size = int(args.size_mb * 2**20)
        full, tenth = work / "corpus.jsonl", work / "corpus-tenth.jsonl"
        docs = write_corpus(full, size)
        mib = full.stat().st_size / 2**20
        write_corpus(tenth, size // 10)
        print(f"corpus: {mib:.0f} MiB, {docs} documents", file=sys.stderr)
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
        bare_cmd = [sys.executable, "-c", BARE_LOOP, str(tok_dir / "tokenizer.json"), str(full)]
        fast = hasattr(HFTokenizer, "encode_batch_fast")
        calls = ["encode_batch", "encode_batch_fast"] if fast else ["encode_batch"]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*calls, "pipeline"]}
        # alternated, best of each: a busy machine slows one side's run, not its best run
        for rep in range(args.repeats):
            for name in calls:
                runs[name].append(run_measured([*bare_cmd, name], env))
            cmd = tokenize_cmd(full, tok_dir, work / "data", args.workers)
            runs["pipeline"].append(run_measured(cmd))
            took = ", ".join(f"{k} {v[-1]['seconds']:.1f} s" for k, v in runs.items())
            print(f"run {rep + 1}/{args.repeats}: {took}", file=sys.stderr)
        small = run_measured(tokenize_cmd(tenth, tok_dir, work / "data-tenth", args.workers))
    wall = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
    cpu = {k: min(r["cpu_seconds"] for r in v) for k, v in runs.items()}
    peak = max(r["peak_rss_bytes"] for r in runs["pipeline"])
    same = calls[-1]  # the call the pipeline makes
    result = {
        "corpus_mib": round(mib, 1),
        "documents": docs,
        "workers": args.workers,
        "repeats": args.repeats,
        **{f"{k}_seconds": round(v, 2) for k, v in wall.items()},
        **{f"{k}_mib_s": round(mib / v, 3) for k, v in wall.items()},
        **{f"{k}_cpu_seconds": round(v, 2) for k, v in cpu.items()},
        # the target: the bare encode_batch loop's wall time / the pipeline's
        "throughput_ratio": round(wall["encode_batch"] / wall["pipeline"], 3),
        # the pipeline's own overhead: against a bare loop making the same call, in wall time
        # and in CPU seconds (work done, whatever else the machine ran)
        "overhead_ratio": round(wall[same] / wall["pipeline"], 3),
        "overhead_cpu_ratio": round(cpu[same] / cpu["pipeline"], 3),
        "peak_rss_mib": round(peak / 2**20, 1),
        "peak_rss_tenth_mib": round(small["peak_rss_bytes"] / 2**20, 1),
        "rss_ratio_full_to_tenth": round(peak / small["peak_rss_bytes"], 3),
        "tokens": json.loads(runs["pipeline"][-1]["stdout"])["train_tokens"],
    }
    result["targets_met"] = {
        "throughput_ratio>=0.9": result["throughput_ratio"] >= 0.9,
        "peak_rss<1GB": peak < 1e9,
        "rss_within_10%_of_tenth": abs(result["rss_ratio_full_to_tenth"] - 1) <= 0.1,
    }
    result["command"] = command
    result["machine"] = machine
    print(json.dumps(result, indent=1))
    for path in [args.json] + [RESULTS] * args.save:
        if path is not None:
            path.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all(result["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
