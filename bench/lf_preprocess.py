"""LLaMA-Factory's own preprocessing, as its ``run_sft`` / ``run_pt`` start (run by bench/bench_data_scale.py in
LLaMA-Factory's venv): tokenizer, template, ``get_dataset`` (which saves the tokenized dataset to ``tokenized_path``),
then the measurements as one ``RESULT {json}`` line; no model is loaded.

    python bench/lf_preprocess.py CONFIG.json
"""

import json
import resource
import sys
import time

start = time.perf_counter()
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer  # noqa: E402
from llamafactory.hparams import get_train_args  # noqa: E402
from llamafactory.model import load_tokenizer  # noqa: E402

config = json.loads(open(sys.argv[1]).read())
model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
imported = time.perf_counter() - start
tokenizer_module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
get_dataset(template, model_args, data_args, training_args, stage=config["stage"], **tokenizer_module)
status = open("/proc/self/status").read().splitlines()
hwm = [int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")][0]
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
result = {
    "peak_rss_gb": hwm / 1e9,
    "worker_peak_rss_gb": kids.ru_maxrss * 1024 / 1e9,
    "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
    "import_s": imported,
}
print("RESULT " + json.dumps(result), flush=True)
