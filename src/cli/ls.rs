//! `harness ls`: the runs in the store as a table, JSON or CSV.

use std::path::Path;

use clap::{Args, ValueEnum};

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
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&runs)?),
        Format::Csv => {
            println!("id,name,commit,status,started,age_s,stage1_loss,stage2_loss");
            for r in &runs {
                println!(
                    "{},{},{},{},{},{:.0},{},{}",
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
            println!(
                "{:<44} {:<20} {:<8} {:<12} {:>8} {:>12} {:>12}",
                "RUN", "NAME", "COMMIT", "STATUS", "AGE", "S1 LOSS", "S2 LOSS"
            );
            for r in &runs {
                println!(
                    "{:<44} {:<20} {:<8} {:<12} {:>8} {:>12} {:>12}",
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
