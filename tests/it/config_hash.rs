//! Experiment parsing, validation and identity.

use harness::config::{self, parse, stage_keys, validate};

use crate::common::experiment;

fn keys(text: &str) -> config::StageKeys {
    stage_keys(&parse(text, "t.toml").unwrap())
}

#[test]
fn hash_ignores_order_comments_whitespace_and_explicit_defaults() {
    let base = experiment("a", "[stage2]\nlora_rank = 8\n");
    let reordered = "# a comment\n[stage2]\n   lora_rank   =   8   # trailing\n\n[model]\nlm = \"builtin:l\"\nvision = \"builtin:v\"\n\n";
    let reordered = format!("seed = 1\nname = \"a\"\n{reordered}");
    let defaults_spelled = experiment("a", "").replace(
        "lm = \"builtin:l\"\n",
        "lm = \"builtin:l\"\nfeature_layer = -2\nprojector = \"residual\"\nprojector_depth = 0\ndtype = \"auto\"\n",
    ) + "[stage1]\nlr = 0.001\nwarmup = 3e-2\nschedule = \"cosine\"\n[stage2]\nlora_rank = 8\nquant = \"nf4\"\nlr = 2e-4\nlora_targets = [\"q_proj\", \"k_proj\", \"v_proj\", \"dense\", \"fc1\", \"fc2\"]\n[data]\nmax_len = 512\n[eval]\nbeams = 1\n";
    let k = keys(&base);
    assert_eq!(k, keys(&reordered));
    assert_eq!(k, keys(&defaults_spelled));
    // An integer written for a float default is the same value.
    let int_epochs = experiment("a", "[stage1]\nepochs = 1\n[stage2]\nlora_rank = 8\n");
    assert_eq!(k, keys(&int_epochs));
}

#[test]
fn hash_changes_with_every_real_change() {
    let base = keys(&experiment("a", ""));
    let changes = [
        "[model]\nvision = \"builtin:v2\"\nlm = \"builtin:l\"\n",
        "[stage1]\nlr = 0.002\n",
        "[stage1]\nbatch = 7\n",
        "[stage2]\nlora_rank = 4\n",
        "[stage2]\nquant = \"none\"\n",
        "[data]\nmax_len = 100\n",
        "[eval]\nbeams = 3\n",
    ];
    for c in changes {
        let text = if c.starts_with("[model]") {
            "name = \"a\"\nseed = 1\n".to_string() + c
        } else {
            experiment("a", c)
        };
        assert_ne!(
            base.config,
            keys(&text).config,
            "config hash unchanged by {c:?}"
        );
    }
    let seed = experiment("a", "").replace("seed = 1", "seed = 2");
    assert_ne!(base.stage1, keys(&seed).stage1);
    let depth = experiment("a", "").replace(
        "lm = \"builtin:l\"",
        "lm = \"builtin:l\"\nprojector_depth = 2",
    );
    assert_ne!(base.stage1, keys(&depth).stage1);
    assert_ne!(
        base.stage2,
        keys(&depth).stage2,
        "stage 2 key must follow stage 1's"
    );
}

#[test]
fn stage1_key_ignores_stage2_only_fields() {
    let r8 = keys(&experiment("a", "[stage2]\nlora_rank = 8\n"));
    let r16 = keys(&experiment(
        "b",
        "[stage2]\nlora_rank = 16\nprojector_lr = 1e-4\n[eval]\nbeams=2\n",
    ));
    assert_eq!(r8.stage1, r16.stage1);
    assert_ne!(r8.stage2, r16.stage2);
    // The name is a label, not identity.
    assert_eq!(
        keys(&experiment("x", "")).config,
        keys(&experiment("y", "")).config
    );
}

#[test]
fn unknown_keys_are_errors_with_file_and_line() {
    let cases = [
        (
            experiment("a", "[stage1]\nlr = 1e-3\nlearning_rate = 1\n"),
            10,
            "learning_rate",
        ),
        (
            experiment("a", "").replace("seed = 1", "seed = 1\nsed = 2"),
            3,
            "sed",
        ),
        (
            experiment("a", "[stage2]\nlora_rank = 4\nlora_rnak = 4\n"),
            10,
            "lora_rnak",
        ),
        (experiment("a", "[dta]\nmax_len = 3\n"), 8, "dta"),
    ];
    for (text, line, key) in cases {
        let e = format!("{:#}", parse(&text, "exp/x.toml").unwrap_err());
        assert!(e.contains("exp/x.toml"), "{e}");
        assert!(e.contains(key), "{e}");
        assert!(e.contains(&format!(":{line}")), "expected line {line}: {e}");
    }
}

#[test]
fn wrong_types_name_the_key_and_line() {
    let text = experiment("a", "[stage1]\nbatch = \"big\"\n");
    let e = format!("{:#}", parse(&text, "x.toml").unwrap_err());
    assert!(e.contains("x.toml:9"), "{e}");
    assert!(e.contains("batch"), "{e}");
}

#[test]
fn semantic_problems_are_reported_together() {
    let text = experiment(
        "a",
        "[stage1]\nwarmup = 1.5\n[stage2]\nlora_rank = 0\nlora_targets = [\"q_proj\", \"nope\"]\n",
    )
    .replace(
        "lm = \"builtin:l\"",
        "lm = \"builtin:l\"\nprojector_depth = -1",
    );
    let e = parse(&text, "x.toml").unwrap();
    let problems = validate(&e, &text);
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "model.projector_depth",
            "stage1.warmup",
            "stage2.lora_rank",
            "stage2.lora_targets"
        ]
    );
    assert_eq!(problems[0].line, Some(7));
    assert_eq!(problems[2].line, Some(12));
    // load() reports them all in one error that names the file.
    let d = tempfile::tempdir().unwrap();
    let p = crate::common::write(d.path(), "bad.toml", &text);
    let msg = format!("{:#}", config::load(&p).unwrap_err());
    assert!(
        msg.contains("bad.toml") && msg.contains("lora_rank") && msg.contains("warmup"),
        "{msg}"
    );
}

#[test]
fn missing_paths_are_reported_at_once() {
    let text = "name = \"a\"\n[model]\nvision = \"/nope/v\"\nlm = \"/nope/l\"\n";
    let e = parse(text, "x").unwrap();
    let missing = config::check_paths(&e, &[1, 2]);
    assert_eq!(missing.len(), 4, "{missing:?}");
}

#[test]
fn resolved_toml_round_trips_to_the_same_hash() {
    let e = parse(&experiment("a", "[stage2]\nlora_rank = 12\n"), "x").unwrap();
    let again = parse(&config::to_toml(&e), "run.toml").unwrap();
    assert_eq!(e, again);
    assert_eq!(stage_keys(&e), stage_keys(&again));
}

/// `data.pad_to_multiple`: read from the TOML, the backend's default when 0 (8 on the
/// CPU, 64 on a GPU), at most `max_len`, and outside the stage keys (padding is masked and
/// unlabelled: `train_step::a_batchs_summed_loss_is_the_sum_over_its_rows_unpadded`).
#[test]
fn padding_multiple_is_configurable_and_leaves_the_keys_alone() {
    let default = parse(&experiment("a", ""), "t.toml").unwrap();
    assert_eq!(default.data.pad_to_multiple, 0);
    let auto = if cfg!(feature = "cuda") { 64 } else { 8 };
    assert_eq!(default.data.pad_multiple(), auto);
    let text = experiment("a", "[data]\npad_to_multiple = 64\n");
    let set = parse(&text, "t.toml").unwrap();
    assert_eq!(set.data.pad_multiple(), 64);
    assert!(validate(&set, &text).is_empty());
    let (a, b) = (stage_keys(&set), stage_keys(&default));
    assert_eq!((a.stage1, a.stage2), (b.stage1, b.stage2));
    let text = experiment("a", "[data]\nmax_len = 96\npad_to_multiple = 128\n");
    let problems = validate(&parse(&text, "t.toml").unwrap(), &text);
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["data.pad_to_multiple"]);
}
