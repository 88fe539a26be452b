//! Page sections shared by run reports and comparisons. Each returns HTML in which every
//! value from a run has been escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use anyhow::Result;

use super::chart::Figure;
use super::data::{self, RunData};
use super::figures::is_count;
use super::html::{badge, esc, href, num, num_cell, table, td};
use super::subjects::{self, Estimate};
use crate::eval::intervals::is_headline_key;
use crate::store::Store;

/// Renders charts inline as SVG and writes each as `<png_dir>/<id>.png`; the PNG links are
/// `png_href` + file name. PNGs from an earlier rendering that are no longer drawn are
/// removed, so the folder always matches the page.
pub fn charts<F: Figure>(charts: &[F], png_dir: &Path, png_href: &str) -> Result<String> {
    std::fs::create_dir_all(png_dir)?;
    // Charts are independent: draw them on all cores.
    let rendered: Vec<Result<String>> = std::thread::scope(|s| {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let chunk = charts.len().div_ceil(workers).max(1);
        let handles: Vec<_> = charts
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|c| {
                            c.write_png(&png_dir.join(format!("{}.png", c.id())))?;
                            c.to_svg()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("chart thread"))
            .collect()
    });
    let keep: Vec<String> = charts.iter().map(|c| format!("{}.png", c.id())).collect();
    for e in std::fs::read_dir(png_dir)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".png") && !keep.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if charts.is_empty() {
        return Ok("<p class=\"muted\">No metrics to draw yet.</p>".into());
    }
    let mut s = String::from("<div class=\"charts\">");
    for (c, svg) in charts.iter().zip(rendered) {
        let _ = write!(
            s,
            "<figure class=\"chart\" id=\"chart-{}\">{}<figcaption><a href=\"{}\">PNG</a></figcaption></figure>",
            esc(c.id()),
            svg?,
            href(&format!("{png_href}{}.png", c.id()))
        );
    }
    s.push_str("</div>");
    Ok(s)
}

/// Provenance as a table with one column per run.
pub fn provenance(runs: &[&RunData]) -> String {
    type Field = fn(&crate::store::provenance::Provenance) -> String;
    let fields: [(&str, Field); 11] = [
        ("commit", |p| p.code.commit.clone()),
        ("branch", |p| {
            p.code.branch.clone().unwrap_or_else(|| "-".into())
        }),
        ("dirty", |p| dirty_summary(&p.code)),
        ("host", |p| p.host.clone()),
        ("backend", |p| p.backend.clone()),
        ("device", |p| p.device.clone()),
        ("os", |p| p.os.clone()),
        ("versions", |p| {
            format!("harness {}, burn {}", p.harness_version, p.burn_version)
        }),
        ("command", |p| p.command.join(" ")),
        ("started", |p| p.started.clone()),
        ("ended", |p| p.ended.clone().unwrap_or_else(|| "-".into())),
    ];
    let mut header = vec![""];
    header.extend(runs.iter().map(|r| r.id()));
    let rows: Vec<String> = fields
        .iter()
        .map(|(name, f)| {
            let mut row = format!("<th>{}</th>", esc(name));
            for r in runs {
                match &r.provenance {
                    Some(p) => row.push_str(&td(&f(p))),
                    None => row.push_str("<td class=\"muted\">no provenance.json</td>"),
                }
            }
            row
        })
        .collect();
    table("prov", &header, &rows)
}

/// `clean`, or how many files changed, the diff size and hash, and the first files.
pub fn dirty_summary(c: &crate::store::provenance::CodeState) -> String {
    if !c.dirty {
        return "clean".into();
    }
    let mut files: Vec<&str> = c
        .changed_files
        .iter()
        .take(12)
        .map(|s| s.as_str())
        .collect();
    if c.changed_files.len() > 12 {
        files.push("...");
    }
    format!(
        "dirty: {} files changed, diff {} bytes, sha256 {}: {}",
        c.changed_files.len(),
        c.diff_bytes,
        c.diff_hash
            .as_deref()
            .map(|h| &h[..h.len().min(12)])
            .unwrap_or("-"),
        files.join(", ")
    )
}

/// Run state, error, and each stage with the run whose result it uses.
pub fn status(r: &RunData) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<p>Status {} &middot; started {} &middot; ended {} &middot; {} metric rows &middot; runner {}</p>",
        badge(&r.summary.status),
        esc(&r.status.started),
        esc(r.status.ended.as_deref().unwrap_or("-")),
        r.rows,
        esc(&r.status.runner)
    );
    if let Some(e) = &r.status.error {
        let _ = write!(s, "<p class=\"err\">Error: {}</p>", esc(e));
    }
    let rows: Vec<String> = r
        .status
        .stages
        .iter()
        .map(|(name, st)| {
            let from = if st.run_id == r.id() {
                td("this run")
            } else {
                format!(
                    "<td>reused from <a href=\"{}\">{}</a>{}</td>",
                    href(&format!("../{}/report.html", st.run_id)),
                    esc(&st.run_id),
                    st.reused_across_code
                        .as_ref()
                        .map(|c| format!(" <span class=\"err\">{}</span>", esc(&across_code(c))))
                        .unwrap_or_default()
                )
            };
            format!(
                "{}<td>{}</td>{}{}{}{}",
                td(name),
                badge(&st.state.to_string()),
                td(&st.key[..st.key.len().min(12)]),
                from,
                td(st.started.as_deref().unwrap_or("-")),
                td(st.ended.as_deref().unwrap_or("-"))
            )
        })
        .collect();
    if rows.is_empty() {
        s.push_str("<p class=\"muted\">No stage started.</p>");
    } else {
        s.push_str(&table(
            "stages",
            &["stage", "state", "key", "result", "started", "ended"],
            &rows,
        ));
    }
    s
}

/// `[low, high]` of an interval, or a dash.
pub fn interval_text(low: Option<f64>, high: Option<f64>) -> String {
    match (low, high) {
        (Some(l), Some(h)) => format!("[{}, {}]", num(l), num(h)),
        _ => "-".into(),
    }
}

/// Eval metrics with their intervals: headline metrics in a table, the rest folded away.
pub fn results(estimates: &BTreeMap<String, Estimate>) -> String {
    if estimates.is_empty() {
        return "<p class=\"muted\">No evaluation scores recorded.</p>".into();
    }
    let keys = subjects::ordered(estimates.keys().cloned());
    let row = |k: &String| {
        let e = &estimates[k];
        format!(
            "{}{}<td class=\"n ci\">{}</td><td class=\"muted\">{}</td>",
            td(k),
            num_cell(Some(e.value)),
            esc(&interval_text(e.low, e.high)),
            esc(&e.how)
        )
    };
    let header = ["metric", "value", "95% interval", "how"];
    let (head, rest): (Vec<&String>, Vec<&String>) = keys.iter().partition(|k| is_headline_key(k));
    let mut s = table(
        "results",
        &header,
        &head.iter().map(|k| row(k)).collect::<Vec<_>>(),
    );
    if !rest.is_empty() {
        let _ = write!(
            s,
            "<details><summary>{} more eval metrics (BLEU-1..3, ROUGE-L, per question type)</summary>{}</details>",
            rest.len(),
            table("results more", &header, &rest.iter().map(|k| row(k)).collect::<Vec<_>>())
        );
    }
    s
}

/// Metrics logged once (a final validation loss, a perplexity) outside evaluation: a table
/// rather than a chart of one bar each.
pub fn single_values(r: &RunData) -> String {
    let rows: Vec<String> = r
        .curves
        .iter()
        .filter(|c| !is_count(c) && c.points.len() == 1 && c.split != "eval")
        .filter_map(|c| {
            let (step, v) = c.last()?;
            Some(format!(
                "{}{}{}<td class=\"n\">{step}</td>{}",
                td(&c.stage),
                td(&c.split),
                td(&c.metric),
                num_cell(Some(v))
            ))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    table(
        "single",
        &["stage", "split", "metric", "step", "value"],
        &rows,
    )
}

/// The experiment in brief: what was trained on what, with which sizes.
pub fn config_brief(r: &RunData) -> String {
    let Some(e) = &r.experiment else {
        return "<p class=\"muted\">No run.toml.</p>".into();
    };
    let kind = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    };
    let steps = |o: &crate::config::StageConfig| {
        if o.max_steps > 0 {
            format!("{} steps", o.max_steps)
        } else {
            format!("{} epochs", o.epochs)
        }
    };
    // The global batch, with the factors it is made of.
    let batch = |o: &crate::config::StageConfig, workers: usize| {
        let per = if workers > 1 {
            format!("{} x {} x {workers} devices", o.batch, o.grad_accum)
        } else {
            format!("{} x {}", o.batch, o.grad_accum)
        };
        format!("batch {} ({per})", o.global_batch(workers))
    };
    let s2 = &e.stage2;
    let fields = [
        ("vision tower", e.model.vision.clone()),
        (
            "projector",
            format!(
                "{} depth {}",
                kind(serde_json::to_value(e.model.projector)),
                e.model.projector_depth
            ),
        ),
        ("language model", e.model.lm.clone()),
        ("seed", e.seed.to_string()),
        (
            "stage 1",
            format!(
                "{}, {}, lr {}",
                steps(&e.stage1),
                batch(&e.stage1, e.devices.len()),
                e.stage1.lr
            ),
        ),
        (
            "stage 2",
            format!(
                "{}, {}, LoRA rank {} alpha {} ({}), lr {} / projector {}",
                steps(&s2.opt),
                batch(&s2.opt, e.devices.len()),
                s2.lora_rank,
                s2.lora_alpha,
                kind(serde_json::to_value(s2.quant)),
                s2.opt.lr,
                s2.projector_lr
            ),
        ),
        (
            "evaluation",
            format!(
                "captions of {} val images, {} QA questions",
                e.eval.caption_images, e.eval.qa_samples
            ),
        ),
    ];
    let rows: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("<th>{}</th>{}", esc(k), td(v)))
        .collect();
    table("brief", &["", ""], &rows)
}

/// `reused across a code change from commit X (the code differs in ...)`: a stage that
/// `--reuse config` took from a run of other code.
pub fn across_code(c: &crate::store::CodeChange) -> String {
    format!(
        "reused across a code change from {} ({})",
        c.commit(),
        c.files_summary()
    )
}

/// One line per stage of these runs reused across a code change, or nothing.
pub fn across_code_notes(runs: &[&RunData]) -> String {
    let mut s = String::new();
    for r in runs {
        for (name, st) in &r.status.stages {
            if let Some(c) = &st.reused_across_code {
                let _ = write!(
                    s,
                    "<p class=\"err\">{}: {name} {} (result of {})</p>",
                    esc(r.id()),
                    esc(&across_code(c)),
                    esc(&st.run_id)
                );
            }
        }
    }
    s
}

/// Last value of every metric (counts apart), with its step.
pub fn final_metrics(r: &RunData) -> String {
    let rows: Vec<String> = r
        .curves
        .iter()
        .filter(|c| !is_count(c))
        .filter_map(|c| {
            let (step, v) = c.last()?;
            Some(format!(
                "{}{}{}<td class=\"n\">{step}</td>{}",
                td(&c.stage),
                td(&c.split),
                td(&c.metric),
                num_cell(Some(v))
            ))
        })
        .collect();
    if rows.is_empty() {
        return "<p class=\"muted\">No metrics recorded.</p>".into();
    }
    table(
        "metrics sortable",
        &["stage", "split", "metric", "step", "last value"],
        &rows,
    )
}

/// Data statistics, skipped samples and truncations: the last value logged (counters
/// are logged once per stage, or cumulatively).
pub fn counts(r: &RunData) -> String {
    let rows: Vec<String> = r
        .curves
        .iter()
        .filter(|c| is_count(c))
        .filter_map(|c| {
            let (step, v) = c.last()?;
            Some(format!(
                "{}{}{}<td class=\"n\">{step}</td><td class=\"n\">{}</td>",
                td(&c.stage),
                td(&c.split),
                td(&c.metric),
                num(v)
            ))
        })
        .collect();
    if rows.is_empty() {
        return "<p class=\"muted\">No data statistics, skips or truncations recorded.</p>".into();
    }
    table(
        "counts",
        &["stage", "split", "counter", "step", "count"],
        &rows,
    )
}

/// The resolved config (`run.toml`).
pub fn config(r: &RunData) -> String {
    match &r.config_text {
        Some(t) => format!("<pre class=\"config\">{}</pre>", esc(t)),
        None => "<p class=\"muted\">No run.toml.</p>".into(),
    }
}

/// Sample outputs of several runs side by side: one row per sample (stage, image, prompt),
/// one column per run.
pub fn samples(runs: &[&RunData], store: &Store) -> String {
    let mut keys: Vec<(String, String, String)> = vec![];
    let mut refs: Vec<(Option<String>, String)> = vec![];
    for r in runs {
        for smp in r.samples.iter().take(data::MAX_SAMPLES) {
            if !keys.contains(&smp.key()) {
                keys.push(smp.key());
                refs.push((smp.image.clone(), smp.reference.clone()));
            }
        }
    }
    let mut s = String::new();
    for r in runs {
        if let Some(e) = &r.samples_error {
            let _ = write!(s, "<p class=\"err\">{}: {}</p>", esc(r.id()), esc(e));
        }
        if r.samples.len() > data::MAX_SAMPLES {
            let _ = write!(
                s,
                "<p class=\"muted\">{}: showing {} of {} samples.</p>",
                esc(r.id()),
                data::MAX_SAMPLES,
                r.samples.len()
            );
        }
    }
    if keys.is_empty() {
        s.push_str("<p class=\"muted\">No sample outputs (evaluation writes samples.json).</p>");
        return s;
    }
    let mut header = vec!["stage", "image", "prompt", "reference"];
    let ids: Vec<String> = runs.iter().map(|r| format!("output: {}", r.id())).collect();
    header.extend(ids.iter().map(|s| s.as_str()));
    let rows: Vec<String> = keys
        .iter()
        .zip(&refs)
        .map(|((stage, image, prompt), (img, reference))| {
            let pic = match img
                .as_deref()
                .and_then(|i| data::thumbnail(i, store).map(|u| (i, u)))
            {
                Some((i, uri)) => format!(
                    "<td><img class=\"thumb\" src=\"{}\" alt=\"{}\" title=\"{}\"></td>",
                    href(&uri),
                    esc(i),
                    esc(i)
                ),
                None => td(if image.is_empty() { "-" } else { image }),
            };
            let mut row = format!("{}{pic}{}{}", td(stage), pre_td(prompt), pre_td(reference));
            for r in runs {
                let out = r
                    .samples
                    .iter()
                    .find(|x| x.key() == (stage.clone(), image.clone(), prompt.clone()));
                match out {
                    Some(x) => row.push_str(&pre_td(&x.output)),
                    None => row.push_str("<td class=\"muted\">-</td>"),
                }
            }
            row
        })
        .collect();
    s.push_str(&table("samples", &header, &rows));
    s
}

fn pre_td(text: &str) -> String {
    format!("<td style=\"white-space:pre-wrap\">{}</td>", esc(text))
}

/// `to` relative to the folder `from` (both made absolute first), with `/` separators,
/// for links between files that move together (results/ and reports/).
pub fn relative(from: &Path, to: &Path) -> String {
    let abs = |p: &Path| -> PathBuf {
        let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        // Normalise `.` and `..` lexically; the folders may not exist yet.
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                c => out.push(c),
            }
        }
        out
    };
    let (f, t) = (abs(from), abs(to));
    let fc: Vec<_> = f.components().collect();
    let tc: Vec<_> = t.components().collect();
    let common = fc.iter().zip(&tc).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); fc.len() - common];
    parts.extend(
        tc[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().to_string()),
    );
    parts.join("/")
}
