#!/usr/bin/env python3
"""Reference outputs for the benchmark scorers (src/eval/bench/), from the official / LLaVA
evaluation scripts themselves.

For each task this runs the reference scripts, unmodified, on the hand-made inputs under
tests/fixtures/bench/<task>/ and writes tests/fixtures/bench/<task>/reference.json:
{"task", "n", "metrics": {...}}, metric names and scales as the Rust scorer gives them
(fractions where the scripts print percentages; exact values where they print rounded
ones: taken from the scripts' own variables, not their printout).

The reference scripts are not part of this repository; pass where you fetched them:

  --llava       a checkout of github.com/haotian-liu/LLaVA (llava/eval/eval_pope.py,
                eval_textvqa.py, m4c_evaluator.py, eval_science_qa.py,
                scripts/convert_vqav2_for_submission.py, scripts/convert_gqa_for_eval.py)
  --mme-convert convert_answer_to_mme.py from LLaVA's eval.zip
                (playground/data/eval/MME/; also in LLaVA's history at 32cebc3)
  --mme-tool    MME's eval_tool/ (calculation.py), from tools/eval_tool.zip of
                github.com/BradyFU/Awesome-Multimodal-Large-Language-Models
  --vqa         a checkout of github.com/GT-Vision-Lab/VQA (the Python 2 API: vqa.py,
                vqaEval.py; run here through lib2to3, tabs expanded as Python 2 read them)
  --gqa-eval    GQA's eval.py as LLaVA uses it (the official script with the missing
                scene-graph/choices files tolerated, e.g. playground/data/eval/gqa/data/
                eval/eval.py of a LLaVA fork)

Needs Python 3.11 (lib2to3) with tqdm and scikit-learn, e.g. in a throwaway venv:
  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install tqdm scikit-learn
  /tmp/venv/bin/python scripts/ref_bench.py --llava ... [--tasks pope,mme]
"""

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import runpy
import shutil
import sys
import tempfile
import types
import warnings

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "bench")


def run_main(path, argv, cwd=None):
    """Runs a script as __main__ with argv; returns (its globals, its stdout)."""
    out = io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = [path] + argv
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out):
            g = runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return g, out.getvalue()


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def stub_llava(llava):
    """`llava.eval.m4c_evaluator` without importing llava/__init__.py (which needs torch)."""
    for name in ["llava", "llava.eval"]:
        sys.modules.setdefault(name, types.ModuleType(name))
    m4c = load_module("llava.eval.m4c_evaluator", os.path.join(llava, "llava", "eval", "m4c_evaluator.py"))
    sys.modules["llava.eval"].m4c_evaluator = m4c
    return m4c


def load_py2(name, path):
    """A Python 2 module (the VQA API) converted by lib2to3, tabs expanded to 8 columns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lib2to3 import refactor
    src = open(path).read().expandtabs(8)
    tool = refactor.RefactoringTool(refactor.get_fixers_from_package("lib2to3.fixes"))
    code = str(tool.refactor_string(src + "\n", name))
    mod = types.ModuleType(name)
    mod.__file__ = path
    exec(compile(code, path, "exec"), mod.__dict__)
    sys.modules[name] = mod
    return mod


def fixture(task, *parts):
    return os.path.join(FIXTURES, task, *parts)


def pope(args):
    _, out = run_main(
        os.path.join(args.llava, "llava", "eval", "eval_pope.py"),
        ["--annotation-dir", fixture("pope", "coco"), "--question-file", fixture("pope", "llava_pope_test.jsonl"),
         "--result-file", fixture("pope", "answers.jsonl")],
    )
    cats, cur = {}, None
    for line in out.splitlines():
        m = re.match(r"Category: (.*), # samples: (\d+)$", line)
        if m:
            cur = cats.setdefault(m.group(1), {"n": int(m.group(2))})
            continue
        for label, key in [("Accuracy", "accuracy"), ("Precision", "precision"), ("Recall", "recall"),
                           ("F1 score", "f1"), ("Yes ratio", "yes_ratio")]:
            if line.startswith(label + ": "):
                cur[key] = float(line[len(label) + 2:])  # printed with repr: exact
    metrics, names = {}, sorted(cats)
    metrics["accuracy"] = sum(cats[c]["accuracy"] for c in names) / len(names)
    metrics["f1"] = sum(cats[c]["f1"] for c in names) / len(names)
    for c in names:
        for key in ["accuracy", "precision", "recall", "f1", "yes_ratio"]:
            metrics[f"{c}/{key}"] = cats[c][key]
    return sum(cats[c]["n"] for c in names), metrics


def textvqa(args):
    stub_llava(args.llava)
    mod = load_module("ref_eval_textvqa", os.path.join(args.llava, "llava", "eval", "eval_textvqa.py"))
    got = {}

    class Recording(mod.TextVQAAccuracyEvaluator):
        def eval_pred_list(self, pred_list):
            got["n"] = len(pred_list)
            got["accuracy"] = super().eval_pred_list(pred_list)
            return got["accuracy"]

    mod.TextVQAAccuracyEvaluator = Recording
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mod.eval_single(fixture("textvqa", "TextVQA_0.5.1_val.json"), fixture("textvqa", "answers.jsonl"))
    return got["n"], {"accuracy": got["accuracy"]}


def vqav2(args):
    stub_llava(args.llava)
    tmp = tempfile.mkdtemp()
    split, ckpt = "fixture", "fixture"
    os.makedirs(os.path.join(tmp, "answers", split, ckpt))
    shutil.copy(fixture("vqav2", "answers.jsonl"), os.path.join(tmp, "answers", split, ckpt, "merge.jsonl"))
    # LLaVA's test-split question list: the ids the submission must cover.
    questions = json.load(open(fixture("vqav2", "questions.json")))["questions"]
    with open(os.path.join(tmp, "llava_vqav2_mscoco_test2015.jsonl"), "w") as f:
        for q in questions:
            f.write(json.dumps({"question_id": q["question_id"], "image": "x.jpg", "text": q["question"]}) + "\n")
    run_main(os.path.join(args.llava, "scripts", "convert_vqav2_for_submission.py"),
             ["--dir", tmp, "--ckpt", ckpt, "--split", split])
    upload = os.path.join(tmp, "answers_upload", split, f"{ckpt}.json")
    vqa_mod = load_py2("vqa", os.path.join(args.vqa, "PythonHelperTools", "vqaTools", "vqa.py"))
    eval_mod = load_py2("vqaEval", os.path.join(args.vqa, "PythonEvaluationTools", "vqaEvaluation", "vqaEval.py"))
    with contextlib.redirect_stdout(io.StringIO()):
        vqa = vqa_mod.VQA(fixture("vqav2", "annotations.json"), fixture("vqav2", "questions.json"))
        res = vqa.loadRes(upload, fixture("vqav2", "questions.json"))
        # n: decimals kept by its round(100 * acc, n); 15 keeps the float as it is.
        ev = eval_mod.VQAEval(vqa, res, n=15)
        ev.evaluate()
    metrics = {"accuracy": ev.accuracy["overall"] / 100}
    for t in sorted(ev.accuracy["perAnswerType"]):
        metrics[f"{t}/accuracy"] = ev.accuracy["perAnswerType"][t] / 100
    shutil.rmtree(tmp)
    return len(ev.evalQA), metrics


def gqa(args):
    tmp = tempfile.mkdtemp()
    preds = os.path.join(tmp, "testdev_balanced_predictions.json")
    run_main(os.path.join(args.llava, "scripts", "convert_gqa_for_eval.py"),
             ["--src", fixture("gqa", "answers.jsonl"), "--dst", preds])
    with contextlib.redirect_stderr(io.StringIO()):
        g, _ = run_main(os.path.abspath(args.gqa_eval),
                        ["--tier", "testdev_balanced", "--questions", fixture("gqa", "testdev_balanced_questions.json"),
                         "--predictions", preds], cwd=tmp)
    s = g["scores"]  # eval.py's own averages, times 100
    n = sum(count for _, count in s["accuracyPerStructuralType"].values())
    shutil.rmtree(tmp)
    return n, {"accuracy": s["accuracy"] / 100, "binary/accuracy": s["binary"] / 100, "open/accuracy": s["open"] / 100}


def scienceqa(args):
    tmp = tempfile.mkdtemp()
    out, res = os.path.join(tmp, "output.json"), os.path.join(tmp, "result.json")
    run_main(os.path.join(args.llava, "llava", "eval", "eval_science_qa.py"),
             ["--base-dir", fixture("scienceqa"), "--result-file", fixture("scienceqa", "answers.jsonl"),
              "--output-file", out, "--output-result", res])
    r, o = json.load(open(res)), json.load(open(out))
    mm_right = sum(1 for x in o["correct"] if x["is_multimodal"])
    mm_total = mm_right + sum(1 for x in o["incorrect"] if x["is_multimodal"])
    shutil.rmtree(tmp)
    return r["count"], {"accuracy": r["correct"] / r["count"], "img_accuracy": mm_right / mm_total}


def mme(args):
    tmp = tempfile.mkdtemp()
    root = os.path.join(tmp, "MME")
    bench = os.path.join(root, "MME_Benchmark_release_version")
    shutil.copytree(fixture("mme", "MME_Benchmark_release_version"), bench)
    for cat in os.listdir(bench):  # the images/ folder the script checks for (git keeps no empty folders)
        if os.path.isdir(os.path.join(bench, cat, "questions_answers_YN")):
            os.makedirs(os.path.join(bench, cat, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "answers"))
    shutil.copy(fixture("mme", "answers.jsonl"), os.path.join(root, "answers", "fixture.jsonl"))
    run_main(os.path.abspath(args.mme_convert), ["--experiment", "fixture"], cwd=root)
    calc = load_module("ref_mme_calculation", os.path.join(args.mme_tool, "calculation.py"))
    recorded = []
    cm = calc.calculate_metrics
    original = cm.compute_metric

    def compute_metric(self, gts, preds):
        d = original(self, gts, preds)
        recorded.append((len(gts), d))  # process_result adds "acc_plus" to this dict
        return d

    cm.compute_metric = compute_metric
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm().process_result(os.path.join(root, "eval_tool", "answers", "fixture"))
    totals = [float(m.group(1)) for m in re.finditer(r"total score: (\S+)", out.getvalue())]
    scores = {m.group(1): float(m.group(2)) for m in re.finditer(r"\t (\S+)  score: (\S+)", out.getvalue())}
    names = list(calc.eval_type_dict["Perception"]) + list(calc.eval_type_dict["Cognition"])
    metrics = {"perception": totals[0], "cognition": totals[1]}
    for name, (_, d) in zip(names, recorded):
        metrics[f"{name}/accuracy"] = float(d["acc"])
        metrics[f"{name}/accuracy_plus"] = float(d["acc_plus"])
        metrics[f"{name}/score"] = scores[name]
    shutil.rmtree(tmp)
    return sum(n for n, _ in recorded), metrics


TASKS = {"pope": pope, "textvqa": textvqa, "vqav2": vqav2, "gqa": gqa, "scienceqa": scienceqa, "mme": mme}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llava", required=True)
    p.add_argument("--mme-convert", required=True)
    p.add_argument("--mme-tool", required=True)
    p.add_argument("--vqa", required=True)
    p.add_argument("--gqa-eval", required=True)
    p.add_argument("--tasks", default=",".join(TASKS))
    args = p.parse_args()
    for task in args.tasks.split(","):
        n, metrics = TASKS[task](args)
        path = fixture(task, "reference.json")
        with open(path, "w") as f:
            json.dump({"task": task, "n": n, "metrics": metrics}, f, indent=1)
            f.write("\n")
        print(f"{task}: n={n} " + ", ".join(f"{k}={v:.6g}" for k, v in list(metrics.items())[:4]) + f" -> {path}")


if __name__ == "__main__":
    main()
