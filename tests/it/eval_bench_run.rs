//! Benchmark generation (`harness eval bench`, `[[eval.bench]]`) on a micro run over the
//! synthetic world's benchmark sets: answers in LLaVA's format, metrics in the store,
//! resumption after an interruption, missing images counted; and the sets themselves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use harness::data::synth::{generate, scene, SynthOptions};
use harness::data::synth_bench::{BENCH_IMAGES, POPE_CATEGORIES};
use harness::eval::bench::pope::says_no;
use harness::eval::bench::{self, GtPaths, Task};
use harness::report::leaderboard;
use harness::store::{runs, Store};

use crate::common::{harness_train, succeed, write};

const SEED: u64 = 4;

fn world(dir: &Path) {
    generate(
        dir,
        &SynthOptions {
            images: 60,
            size: 32,
            seed: SEED,
            val_fraction: 0.2,
            threads: 2,
        },
    )
    .unwrap();
}

/// A micro experiment on the world in `dir/synth`; `bench` is appended (TOML).
fn exp(dir: &Path, name: &str, bench: &str) -> PathBuf {
    let root = dir.join("synth").display().to_string();
    let text = format!(
        r#"name = "{name}"
seed = 2
[model]
vision = "builtin:clip-micro"
lm = "builtin:phi-micro"
[data]
coco_root = "{root}"
instruct_json = "{root}/llava_instruct_150k.json"
instruct_val_json = "{root}/llava_instruct_val.json"
val_images = 4
stage2_val = 8
max_len = 200
[stage1]
max_steps = 2
batch = 8
[stage2]
max_steps = 2
batch = 4
lora_rank = 2
[eval]
caption_images = 2
qa_samples = 4
max_new_tokens = 4
gallery = 2
{bench}"#
    );
    write(dir, &format!("{name}.toml"), &text)
}

struct Micro {
    tmp: tempfile::TempDir,
    results: PathBuf,
    cache: PathBuf,
}

impl Micro {
    fn cmd(&self) -> std::process::Command {
        harness_train(self.tmp.path(), &self.results, &self.cache)
    }
    fn pope(&self) -> PathBuf {
        self.tmp.path().join("synth/bench/pope")
    }
    fn gqa(&self) -> PathBuf {
        self.tmp.path().join("synth/bench/gqa")
    }
    fn store(&self) -> Store {
        Store::new(&self.results)
    }
    fn run_id(&self, name: &str) -> String {
        self.store().resolve(name).unwrap()
    }
    fn answers(&self, name: &str, task: &str) -> PathBuf {
        self.results
            .join(self.run_id(name))
            .join("bench")
            .join(task)
            .join("answers.jsonl")
    }
}

/// A trained micro run named `name` (both stages), with `bench` in its experiment.
fn micro(name: &str, bench: &str) -> Micro {
    let tmp = tempfile::tempdir().unwrap();
    let m = Micro {
        results: tmp.path().join("results"),
        cache: tmp.path().join("cache"),
        tmp,
    };
    world(&m.tmp.path().join("synth"));
    let e = exp(m.tmp.path(), name, bench);
    succeed(m.cmd().arg("run").arg(&e));
    m
}

fn lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `stage2/eval/<metric>` of a run, as the store's summary gives it.
fn stored(m: &Micro, name: &str) -> BTreeMap<String, f64> {
    runs::summary(&m.store(), &m.run_id(name))
        .unwrap()
        .metrics
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("stage2/eval/").map(|k| (k.to_string(), v)))
        .collect()
}

/// POPE accuracy per category computed here from the files, by eval_pope.py's rule.
fn pope_accuracy_by_hand(pope: &Path, answers: &[serde_json::Value]) -> BTreeMap<String, f64> {
    let by_id: HashMap<i64, &str> = answers
        .iter()
        .map(|a| {
            (
                a["question_id"].as_i64().unwrap(),
                a["text"].as_str().unwrap(),
            )
        })
        .collect();
    let questions = lines(&pope.join("llava_pope_test.jsonl"));
    let mut out = BTreeMap::new();
    for cat in POPE_CATEGORIES {
        let labels = lines(&pope.join(format!("coco/coco_pope_{cat}.json")));
        let qs: Vec<&serde_json::Value> =
            questions.iter().filter(|q| q["category"] == cat).collect();
        assert_eq!(qs.len(), labels.len());
        let mut right = 0;
        for (q, l) in qs.iter().zip(&labels) {
            let said_yes = !says_no(by_id[&q["question_id"].as_i64().unwrap()]);
            right += usize::from(said_yes == (l["label"] == "yes"));
        }
        out.insert(cat.to_string(), right as f64 / labels.len() as f64);
    }
    out
}

/// The acceptance test: a micro run benchmarks itself at its end (`[[eval.bench]]`, GQA
/// with a limit), then `harness eval bench` runs POPE on it; answers are in LLaVA's
/// format, one per question, and the metrics are in the store with the values the files
/// give.
#[test]
fn eval_bench_on_a_micro_run_records_benchmark_metrics() {
    let bench = r#"
[[eval.bench]]
task = "gqa"
data = "synth/bench/gqa"
limit = 10
batch = 4
"#;
    let m = micro("mb", bench);
    // In-run: GQA at the end of the run, 10 questions spread over the set.
    let gqa = lines(&m.answers("mb", "gqa"));
    assert_eq!(gqa.len(), 10);
    let metrics = stored(&m, "mb");
    assert_eq!(metrics["bench/gqa/n"], 10.0);
    let right = gqa_right_by_hand(&m.gqa(), &gqa);
    assert_eq!(metrics["bench/gqa/accuracy"], right as f64 / 10.0);
    assert!(metrics["bench/gqa/samples_per_s"] > 0.0);

    // The CLI on the finished run: the whole POPE set.
    let out = succeed(
        m.cmd()
            .args([
                "eval", "bench", "mb", "--task", "pope", "--batch", "8", "--data",
            ])
            .arg(m.pope())
            .arg("--json"),
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let answers = lines(&m.answers("mb", "pope"));
    let questions = lines(&m.pope().join("llava_pope_test.jsonl"));
    assert_eq!(answers.len(), questions.len());
    assert_eq!(printed["n"], questions.len());
    for (a, q) in answers.iter().zip(&questions) {
        let keys: Vec<&str> = a.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for k in [
            "question_id",
            "prompt",
            "text",
            "answer_id",
            "model_id",
            "metadata",
        ] {
            assert!(keys.contains(&k), "{k} missing in {a}");
        }
        assert_eq!(a["question_id"], q["question_id"]);
        assert_eq!(a["prompt"], q["text"]);
        assert_eq!(a["model_id"].as_str().unwrap(), m.run_id("mb"));
    }
    let metrics = stored(&m, "mb");
    assert_eq!(metrics["bench/pope/n"], questions.len() as f64);
    let by_hand = pope_accuracy_by_hand(&m.pope(), &answers);
    for (cat, acc) in &by_hand {
        let got = metrics[&format!("bench/pope/{cat}/accuracy")];
        assert!((got - acc).abs() < 1e-12, "{cat}: {got} vs {acc}");
    }
    let mean = by_hand.values().sum::<f64>() / 3.0;
    assert!((metrics["bench/pope/accuracy"] - mean).abs() < 1e-12);
    assert_eq!(metrics["bench/pope/missing_images"], 0.0);
    // The GQA metrics are still there; the answers score the same through `eval score`.
    assert_eq!(metrics["bench/gqa/n"], 10.0);
    let mut gt = GtPaths::new(m.pope().join("coco"));
    gt.questions = Some(m.pope().join("llava_pope_test.jsonl"));
    let again = bench::score_files(Task::Pope, &m.answers("mb", "pope"), &gt).unwrap();
    assert_eq!(
        again.metrics.get("accuracy"),
        Some(metrics["bench/pope/accuracy"])
    );

    // The leaderboard has the headline scores as columns, not the breakdowns.
    let entries = leaderboard::entries(&m.store()).unwrap();
    let (header, rows) = leaderboard::cells(&entries);
    for k in ["pope/accuracy", "pope/f1", "gqa/accuracy"] {
        let col = header
            .iter()
            .position(|h| h == &format!("stage2/eval/bench/{k}"))
            .unwrap_or_else(|| panic!("no {k} column in {header:?}"));
        let want = metrics[&format!("bench/{k}")];
        assert_eq!(rows[0][col], harness::report::html::num(want), "{k}");
    }
    assert!(!header
        .iter()
        .any(|h| h.ends_with("/adversarial/f1") || h.ends_with("/n")));

    // Another experiment asking for a benchmark reuses both trained stages (benchmarks are
    // outside the stage keys) and benchmarks the reused model; it shows its own benchmark
    // only, and the first run's stay as they were.
    let pope_only = r#"
[[eval.bench]]
task = "pope"
data = "synth/bench/pope"
limit = 12
"#;
    let e = exp(m.tmp.path(), "mb2", pope_only);
    succeed(m.cmd().arg("run").arg(&e));
    let status = m.store().read_status(&m.run_id("mb2")).unwrap();
    for st in ["stage1", "stage2"] {
        assert_eq!(
            status.stages[st].run_id,
            m.run_id("mb"),
            "{st} was not reused"
        );
    }
    let second = stored(&m, "mb2");
    assert_eq!(second["bench/pope/n"], 12.0);
    assert!(!second.contains_key("bench/gqa/n"), "{second:?}");
    assert_eq!(lines(&m.answers("mb2", "pope")).len(), 12);
    assert_eq!(stored(&m, "mb")["bench/pope/n"], questions.len() as f64);
}

fn gqa_right_by_hand(gqa: &Path, answers: &[serde_json::Value]) -> usize {
    let gt: serde_json::Value = serde_json::from_slice(
        &std::fs::read(gqa.join("data/testdev_balanced_questions.json")).unwrap(),
    )
    .unwrap();
    answers
        .iter()
        .filter(|a| {
            let want = gt[a["question_id"].as_str().unwrap()]["answer"]
                .as_str()
                .unwrap();
            a["text"]
                .as_str()
                .unwrap()
                .trim_end_matches('.')
                .to_lowercase()
                == want
        })
        .count()
}

/// Interrupted evaluations resume: a first call answers part of the set, a crash tears
/// the last line, a killed call stops wherever it is, and the final call answers the rest;
/// every question is answered exactly once and earlier answers are kept byte for byte.
/// Missing images are skipped, named and counted, and answered once they appear.
#[test]
fn interrupted_eval_bench_resumes_and_answers_each_question_once() {
    let m = micro("mr", "");
    let pope = m.pope();
    let bench = |extra: &[&str]| {
        let mut c = m.cmd();
        c.args([
            "eval", "bench", "mr", "--task", "pope", "--batch", "1", "--data",
        ])
        .arg(&pope)
        .args(extra);
        c
    };
    let questions = lines(&pope.join("llava_pope_test.jsonl"));
    let n = questions.len();
    // A first call on part of the set.
    succeed(&mut bench(&["--limit", "6"]));
    let path = m.answers("mr", "pope");
    let first = std::fs::read_to_string(&path).unwrap();
    assert_eq!(first.lines().count(), 6);
    // A crash in the middle of writing a line.
    std::fs::write(&path, format!("{first}{{\"question_id\": 99, \"prom")).unwrap();
    // One image is missing from here on.
    let name = questions[n - 1]["image"].as_str().unwrap();
    let img = pope.join("val2014").join(name);
    let hidden = img.with_extension("hidden");
    std::fs::rename(&img, &hidden).unwrap();
    let answered_first: HashSet<i64> = first
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["question_id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let unanswered_of = |image: &str| {
        questions
            .iter()
            .filter(|q| {
                q["image"] == image && !answered_first.contains(&q["question_id"].as_i64().unwrap())
            })
            .count()
    };
    let skipped = unanswered_of(name);
    assert!(skipped > 0);
    // Another one is corrupt (truncated to a few bytes of JPEG header).
    let bad = questions[n / 2]["image"].as_str().unwrap();
    assert_ne!(bad, name);
    let corrupt = unanswered_of(bad);
    assert!(corrupt > 0);
    let bad_img = pope.join("val2014").join(bad);
    let good_bytes = std::fs::read(&bad_img).unwrap();
    std::fs::write(&bad_img, &good_bytes[..16]).unwrap();
    // A call killed wherever it is.
    let mut child = bench(&[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::common::wait_for(std::time::Duration::from_secs(60), || {
        std::fs::read_to_string(&path)
            .map(|t| t.lines().count() >= 10)
            .unwrap_or(false)
    });
    let _ = child.kill();
    let status = child.wait().unwrap();
    eprintln!(
        "the kill landed mid-way: {} ({} of {n} lines)",
        !status.success(),
        std::fs::read_to_string(&path).unwrap().lines().count()
    );
    // The next call finishes, skipping the missing and the corrupt image's questions and
    // naming both.
    let out = succeed(&mut bench(&[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{skipped} missing images")) && err.contains(name),
        "{err}"
    );
    assert!(
        err.contains(&format!("{corrupt} undecodable images")) && err.contains(bad),
        "{err}"
    );
    let metrics = stored(&m, "mr");
    assert_eq!(
        metrics["bench/pope/missing_images"],
        (skipped + corrupt) as f64
    );
    assert_eq!(metrics["bench/pope/n"], (n - skipped - corrupt) as f64);
    // Then both come back, and only their questions are asked.
    std::fs::rename(&hidden, &img).unwrap();
    std::fs::write(&bad_img, &good_bytes).unwrap();
    let out = succeed(&mut bench(&[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{} answered now", skipped + corrupt)),
        "{err}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(&first), "earlier answers were rewritten");
    let answers = lines(&path);
    assert_eq!(answers.len(), n);
    let ids: HashSet<i64> = answers
        .iter()
        .map(|a| a["question_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), n, "a question answered twice");
    assert_eq!(stored(&m, "mr")["bench/pope/n"], n as f64);
}

/// The world's benchmark sets: POPE's construction over its shapes and GQA-style facts,
/// in files the real scorers read; answering from the scenes themselves scores 1.
#[test]
fn synthetic_benchmark_sets_follow_the_scenes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("synth");
    world(&dir);
    let (first_val, n_val) = (48, 12);
    assert!(n_val <= BENCH_IMAGES);
    let pope = dir.join("bench/pope");
    let questions = lines(&pope.join("llava_pope_test.jsonl"));
    let mut perfect = String::new();
    for cat in POPE_CATEGORIES {
        let labels = lines(&pope.join(format!("coco/coco_pope_{cat}.json")));
        let qs: Vec<&serde_json::Value> =
            questions.iter().filter(|q| q["category"] == cat).collect();
        assert_eq!(qs.len(), labels.len());
        let yes = labels.iter().filter(|l| l["label"] == "yes").count();
        assert_eq!(2 * yes, labels.len(), "{cat}: as many yes as no");
        for (q, l) in qs.iter().zip(&labels) {
            assert_eq!(q["text"], l["text"]);
            assert_eq!(q["image"], l["image"]);
            let name = q["image"].as_str().unwrap();
            assert!(pope.join("val2014").join(name).exists());
            let index: u64 = name.trim_end_matches(".jpg").parse::<u64>().unwrap() - 1;
            assert!((first_val..first_val + n_val).contains(&(index as usize)));
            let kind = q["text"]
                .as_str()
                .unwrap()
                .strip_prefix("Is there a ")
                .and_then(|r| r.strip_suffix(" in the image?"))
                .unwrap()
                .to_string();
            let present = scene(SEED, index)
                .shapes
                .iter()
                .any(|s| s.kind.name() == kind);
            assert_eq!(present, l["label"] == "yes", "{cat} {name} {kind}");
            let said = if present {
                "Yes, there is."
            } else {
                "No, there is not."
            };
            perfect.push_str(&format!(
                "{}\n",
                serde_json::json!({"question_id": q["question_id"], "prompt": q["text"], "text": said})
            ));
        }
    }
    let pred = tmp.path().join("perfect.jsonl");
    std::fs::write(&pred, perfect).unwrap();
    let mut gt = GtPaths::new(pope.join("coco"));
    gt.questions = Some(pope.join("llava_pope_test.jsonl"));
    let s = bench::score_files(Task::Pope, &pred, &gt).unwrap();
    assert_eq!(s.n, questions.len());
    assert_eq!(s.metrics.get("accuracy"), Some(1.0));
    assert_eq!(s.metrics.get("f1"), Some(1.0));

    // GQA: every answer is a fact of its scene; the world's own answers score 1.
    let gqa = dir.join("bench/gqa");
    let qs = lines(&gqa.join("llava_gqa_testdev_balanced.jsonl"));
    assert!(qs.len() > 5 * n_val, "{} questions", qs.len());
    let gt: serde_json::Value = serde_json::from_slice(
        &std::fs::read(gqa.join("data/testdev_balanced_questions.json")).unwrap(),
    )
    .unwrap();
    let mut perfect = String::new();
    for q in &qs {
        let id = q["question_id"].as_str().unwrap();
        let item = &gt[id];
        assert_eq!(item["question"], q["text"]);
        assert_eq!(
            format!("{}.jpg", item["imageId"].as_str().unwrap()),
            q["image"].as_str().unwrap()
        );
        assert!(gqa
            .join("data/images")
            .join(q["image"].as_str().unwrap())
            .exists());
        // Scored as LLaVA converts it: a trailing period and capitals do not matter.
        let said = format!("{}.", item["answer"].as_str().unwrap().to_uppercase());
        perfect.push_str(&format!(
            "{}\n",
            serde_json::json!({"question_id": id, "prompt": q["text"], "text": said})
        ));
    }
    std::fs::write(&pred, perfect).unwrap();
    let s = bench::score_files(
        Task::Gqa,
        &pred,
        &GtPaths::new(gqa.join("data/testdev_balanced_questions.json")),
    )
    .unwrap();
    assert_eq!(s.n, qs.len());
    assert_eq!(s.metrics.get("accuracy"), Some(1.0));
    assert!(s.metrics.get("binary/accuracy").is_some() && s.metrics.get("open/accuracy").is_some());

    // The same seed gives the same sets.
    let again = tmp.path().join("again");
    world(&again);
    for f in [
        "bench/pope/llava_pope_test.jsonl",
        "bench/pope/coco/coco_pope_adversarial.json",
        "bench/gqa/data/testdev_balanced_questions.json",
    ] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f}"
        );
    }
}

/// ScienceQA on a micro run: a problem without an image is asked as text only (no image
/// tokens), one with an image with it; the recorded prompts say which (`<image>\n`), and
/// the stored metrics are the answers file's score.
#[test]
fn scienceqa_asks_text_only_problems_without_an_image() {
    let m = micro("ms", "");
    let sqa = m.tmp.path().join("sqa");
    let fixture = crate::common::repo_path("tests/fixtures/bench/scienceqa");
    std::fs::create_dir_all(sqa.join("images/test/5")).unwrap();
    for f in ["problems.json", "pid_splits.json"] {
        std::fs::copy(fixture.join(f), sqa.join(f)).unwrap();
    }
    let val_image = std::fs::read_dir(m.tmp.path().join("synth/val2017"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(val_image, sqa.join("images/test/5/image.png")).unwrap();
    std::fs::write(
        sqa.join("llava_test_CQM-A.json"),
        r#"[{"id": "4", "conversations": [{"from": "human", "value": "Context: N/A\nQuestion: Which word is a noun?\nOptions: (A) run (B) dog"}]},
            {"id": "5", "image": "5/image.png", "conversations": [{"from": "human", "value": "<image>\nContext: A map.\nQuestion: Which state is farthest north?\nOptions: (A) Ohio (B) Maine"}]}]"#,
    )
    .unwrap();
    succeed(
        m.cmd()
            .args(["eval", "bench", "ms", "--task", "scienceqa", "--data"])
            .arg(&sqa),
    );
    let answers = lines(&m.answers("ms", "scienceqa"));
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0]["question_id"], "4");
    assert!(!answers[0]["prompt"].as_str().unwrap().contains("<image>"));
    assert!(answers[1]["prompt"]
        .as_str()
        .unwrap()
        .starts_with("<image>\nContext: A map."));
    assert_eq!(answers[0]["metadata"]["image"], serde_json::Value::Null);
    let metrics = stored(&m, "ms");
    assert_eq!(metrics["bench/scienceqa/n"], 2.0);
    let again = bench::score_files(
        Task::ScienceQa,
        &m.answers("ms", "scienceqa"),
        &GtPaths::new(sqa.clone()),
    )
    .unwrap();
    assert_eq!(again.n, 2);
    for k in ["accuracy", "img_accuracy"] {
        assert_eq!(
            again.metrics.get(k),
            Some(metrics[&format!("bench/scienceqa/{k}")]),
            "{k}"
        );
    }
}
