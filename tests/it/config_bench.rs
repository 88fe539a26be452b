//! `[[eval.bench]]` in experiment files: parsed strictly, errors naming file, key and line,
//! resolved into run.toml, outside the stage keys.

use harness::config::{self, parse, stage_keys, to_toml, validate, BenchConfig};

use crate::common::{experiment, write};

const BENCH: &str = r#"[eval]
qa_samples = 10

[[eval.bench]]
task = "pope"
data = "data/eval/pope"
limit = 500

[[eval.bench]]
task = "gqa"
data = "data/eval/gqa"
batch = 16
"#;

#[test]
fn bench_entries_parse_with_defaults_and_round_trip() {
    let text = experiment("b", BENCH);
    let e = parse(&text, "b.toml").unwrap();
    assert!(validate(&e, &text).is_empty());
    assert_eq!(
        e.eval.bench,
        vec![
            BenchConfig {
                task: "pope".into(),
                data: "data/eval/pope".into(),
                limit: 500,
                batch: 8,
            },
            BenchConfig {
                task: "gqa".into(),
                data: "data/eval/gqa".into(),
                limit: 0,
                batch: 16,
            },
        ]
    );
    // run.toml holds them and reads back to the same experiment.
    let resolved = to_toml(&e);
    assert!(resolved.contains("[[eval.bench]]"), "{resolved}");
    assert_eq!(parse(&resolved, "run.toml").unwrap(), e);
}

#[test]
fn benchmarks_do_not_change_stage_keys() {
    let plain = stage_keys(&parse(&experiment("b", "[eval]\nqa_samples = 10\n"), "b").unwrap());
    let with = stage_keys(&parse(&experiment("b", BENCH), "b").unwrap());
    assert_eq!(plain.stage1, with.stage1);
    assert_eq!(plain.stage2, with.stage2);
    assert_ne!(plain.config, with.config, "the run is another run");
    // Without benchmarks nothing about them enters the identity.
    let e = parse(&experiment("b", ""), "b").unwrap();
    assert!(config::canonical(&e)["eval"].get("bench").is_none());
}

#[test]
fn bad_bench_entries_name_file_key_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |name: &str, extra: &str| {
        let p = write(tmp.path(), name, &experiment("b", extra));
        format!("{:#}", config::load(&p).unwrap_err())
    };
    // Line numbers count the 7 lines `experiment` writes first.
    let e = load(
        "unknown_key.toml",
        "[[eval.bench]]\ntask = \"pope\"\ndata = \"d\"\nlimt = 5\n",
    );
    assert!(
        e.contains("unknown_key.toml:11") && e.contains("unknown field `limt`"),
        "{e}"
    );
    let e = load(
        "unknown_task.toml",
        "[[eval.bench]]\ntask = \"pope\"\ndata = \"d\"\n\n[[eval.bench]]\ndata = \"d\"\ntask = \"vqa\"\n",
    );
    assert!(
        e.contains("unknown_task.toml: line 14: `eval.bench[1].task` unknown benchmark \"vqa\" (one of pope, textvqa, vqav2, gqa, scienceqa, mme)"),
        "{e}"
    );
    let e = load(
        "twice.toml",
        "[[eval.bench]]\ntask = \"gqa\"\ndata = \"a\"\n[[eval.bench]]\ntask = \"gqa\"\ndata = \"b\"\nbatch = 0\n",
    );
    assert!(
        e.contains("line 12: `eval.bench[1].task` \"gqa\" is already benchmarked by eval.bench[0]"),
        "{e}"
    );
    assert!(
        e.contains("line 14: `eval.bench[1].batch` must be >= 1"),
        "{e}"
    );
    let e = load("no_data.toml", "[[eval.bench]]\ntask = \"gqa\"\n");
    assert!(
        e.contains("no_data.toml:") && e.contains("missing field `data`"),
        "{e}"
    );
    // Their folders must exist before a run starts.
    let e = parse(&experiment("b", BENCH), "b").unwrap();
    let missing = config::check_paths(&e, &[1, 2]);
    assert!(
        missing.contains(&"`eval.bench[1].data` = \"data/eval/gqa\" does not exist".to_string()),
        "{missing:?}"
    );
}
