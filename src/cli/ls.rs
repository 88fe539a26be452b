//! `harness ls`: the runs in the store as a table, JSON or CSV: identity, state, final
//! losses and the headline eval metrics.

use std::collections::BTreeSet;
use std::path::Path;

use clap::{Args, ValueEnum};

use crate::store::runs::RunSummary;
use crate::store::Store;

#[derive(Args, Debug)]
pub struct LsArgs {
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

pub fn ls(results: &Path, a: LsArgs) -> anyhow::Result<()> {
    let runs = crate::store::runs::summaries(&Store::new(results))?;
    // The headline eval metrics any run has (CIDEr, BLEU-4, QA accuracy...), after the losses.
    let headline: Vec<String> = runs
        .iter()
        .flat_map(|r| r.metrics.keys())
        .filter(|k| crate::eval::intervals::is_headline_key(k))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let value = |r: &RunSummary, k: &str| opt(r.metrics.get(k).copied());
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&runs)?),
        Format::Csv => {
            let extra: String = headline.iter().map(|k| format!(",{k}")).collect();
            println!("id,name,commit,status,started,age_s,stage1_loss,stage2_loss{extra}");
            for r in &runs {
                let extra: String = headline
                    .iter()
                    .map(|k| format!(",{}", value(r, k)))
                    .collect();
                println!(
                    "{},{},{},{},{},{:.0},{},{}{extra}",
                    r.id,
                    r.name,
                    r.commit,
                    r.status,
                    r.started,
                    r.age_s,
                    opt(r.final_loss("stage1")),
                    opt(r.final_loss("stage2"))
                );
            }
        }
        Format::Table => {
            // `stage2/eval/qa_acc` -> `S2 QA_ACC`.
            let short = |k: &str| {
                let stage = k.split('/').next().unwrap_or("").replace("stage", "S");
                let metric = crate::eval::intervals::eval_metric(k).unwrap_or(k);
                format!("{stage} {}", metric.to_uppercase())
            };
            let extra: String = headline
                .iter()
                .map(|k| format!(" {:>12}", short(k)))
                .collect();
            println!(
                "{:<44} {:<20} {:<8} {:<12} {:>8} {:>12} {:>12}{extra}",
                "RUN", "NAME", "COMMIT", "STATUS", "AGE", "S1 LOSS", "S2 LOSS"
            );
            for r in &runs {
                let extra: String = headline
                    .iter()
                    .map(|k| format!(" {:>12}", value(r, k)))
                    .collect();
                println!(
                    "{:<44} {:<20} {:<8} {:<12} {:>8} {:>12} {:>12}{extra}",
                    r.id,
                    r.name,
                    &r.commit[..r.commit.len().min(7)],
                    r.status,
                    crate::store::runs::human_age(r.age_s),
                    opt(r.final_loss("stage1")),
                    opt(r.final_loss("stage2"))
                );
            }
            if runs.is_empty() {
                println!("(no runs in {})", results.display());
            }
        }
    }
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}
