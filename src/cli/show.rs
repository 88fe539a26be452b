//! `harness show RUN`: config, provenance, status and last metrics of one run.

use std::path::Path;

use clap::Args;

use crate::store::Store;

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Run id, unique id prefix, or experiment name (its latest run).
    pub run: String,
    #[arg(long)]
    pub json: bool,
}

pub fn show(results: &Path, a: ShowArgs) -> anyhow::Result<()> {
    let store = Store::new(results);
    let id = store.resolve(&a.run)?;
    let s = crate::store::runs::summary(&store, &id)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let dir = store.run_dir(&id);
    println!("run      {id}\nname     {}\nstatus   {}", s.name, s.status);
    if let Some(e) = &s.error {
        println!("error    {e}");
    }
    if let Ok(p) = store.read_provenance(&id) {
        println!(
            "commit   {}{}{}\nhost     {}\nbackend  {}\nstarted  {}\nended    {}",
            p.code.commit,
            p.code
                .branch
                .as_deref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default(),
            if p.code.dirty {
                format!(" dirty: {} files changed", p.code.changed_files.len())
            } else {
                String::new()
            },
            p.host,
            p.backend,
            p.started,
            p.ended.as_deref().unwrap_or("-")
        );
        match &p.fingerprint {
            Some(f) => println!("code     {} ({} files)", &f.sha256[..12], f.files.len()),
            None => println!("code     - (recorded before code fingerprints)"),
        }
    }
    for (name, st) in &s.stages {
        println!(
            "{name}   {} (key {}, result of {}){}{}",
            st.state,
            &st.key[..12],
            st.run_id,
            st.worker
                .as_ref()
                .map(|w| format!(", trained in {w}"))
                .unwrap_or_default(),
            st.reused_across_code
                .as_ref()
                .map(|c| format!(
                    ", across a code change from {}: {}",
                    c.commit(),
                    c.files_summary()
                ))
                .unwrap_or_default()
        );
    }
    println!("\nconfig ({}):", dir.join("run.toml").display());
    print!(
        "{}",
        std::fs::read_to_string(dir.join("run.toml")).unwrap_or_default()
    );
    println!("\nlast metrics:");
    for (k, v) in &s.metrics {
        println!("  {k:<40} {v:.6}");
    }
    Ok(())
}
